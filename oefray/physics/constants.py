"""Physical constants of the QQ (QSM + qBOLD) model, DESIGN.md section 2.

Units: susceptibilities in ppm (SI volume susceptibility x 1e6), field in tesla, frequencies in
rad/s, times in seconds; fractions are dimensionless in [0, 1].
"""

import math

#: Proton gyromagnetic ratio, rad s^-1 T^-1 **per ppm**: gamma = 267.513e6 rad s^-1 T^-1 times
#: the 1e-6 of a ppm, so that ``GAMMA * B0_T * chi`` with ``chi`` in ppm is in rad/s.
GAMMA: float = 267.513

#: Default main field strength B0, tesla.
B0_T: float = 3.0

#: Microvascular hematocrit, fraction (= 0.47 large-vessel hematocrit x 0.759 small/large ratio).
HCT: float = 0.3567

#: Susceptibility difference between fully deoxygenated and fully oxygenated red blood cells,
#: ppm (SI): 4*pi*0.27 ppm = 3.393 ppm.
DCHI0: float = 4.0 * math.pi * 0.27

#: Hemoglobin volume fraction of blood, fraction: Hct x 0.34 / 1.335 = 0.0908
#: (0.34 g/mL hemoglobin in red cells, 1.335 g/mL hemoglobin density).
PSI_HB: float = HCT * 0.34 / 1.335

#: Susceptibility of oxyhemoglobin, ppm.
CHI_OHB: float = -0.813

#: Susceptibility of blood plasma, ppm.
CHI_P: float = -0.0377

#: Susceptibility difference between deoxy- and oxyhemoglobin, ppm.
DCHI_HB: float = 12.522

#: Susceptibility of fully oxygenated blood, ppm: psi_Hb*chi_oHb + (1 - psi_Hb)*chi_p = -0.1081.
CHI_BA: float = PSI_HB * CHI_OHB + (1.0 - PSI_HB) * CHI_P

#: Venous share of the total cerebral blood volume, fraction.
ALPHA: float = 0.77

#: Arterial oxygen saturation, fraction.
YA: float = 0.98

#: Names of the five QQ parameters, in the order used everywhere (packed ``params[..., k]``
#: arrays, network outputs, Parquet columns): venous oxygenation Y (fraction), venous blood volume
#: v (fraction), tissue R2 (s^-1), signal scale S0 (echo-1-normalised), non-blood susceptibility
#: chi_nb (ppm).
PARAMETERS: tuple[str, ...] = ("Y", "v", "R2", "S0", "chi_nb")

#: The quantities every evaluation reports an RMSE of, in the order of the paper's Tables 1-3:
#: the five parameters, then OEF (percent). The one place this tuple is spelled.
RMSE_QUANTITIES: tuple[str, ...] = ("S0", "R2", "Y", "v", "chi_nb", "OEF")
