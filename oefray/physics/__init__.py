"""Physics and fitting kernels: QQ forward model, f_s, decay fitting, the phantom.

Pure NumPy/SciPy/Numba. Knows nothing of Ray, MLflow, files or Keras. Modules:
``constants`` (QQ constants, parameter names), ``echoes`` (echo-time validation), ``fs`` (the
static-dephasing function), ``qq`` (forward model), ``decay`` (decay fit), ``qq_solve`` (QQ
inversion, Numba kernel in ``qq_kernel``), and the phantom:
``grid`` (physical grids, random fields), ``anatomy`` (tissue labels), ``parameter_maps``
(ground truth), ``measurement`` (noisy images from maps), ``phantom`` (one subject).
"""
