"""Physics and fitting kernels: QQ forward model, f_s, decay fitting, phantoms.

Pure NumPy/SciPy/Numba. Knows nothing of Ray, MLflow, files or Keras.
"""
