"""oefray: brain oxygen extraction fraction from multi-echo GRE MRI, at cluster scale.

Layers (DESIGN.md section 6): ``oefray.physics`` (pure NumPy/Numba kernels), ``oefray.io``
(BIDS and Parquet, no Ray), ``oefray.orchestration`` (Ray), ``oefray.cli`` (Typer).
Importing this package does nothing but define names.
"""

__version__ = "0.1.0"
