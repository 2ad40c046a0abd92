"""Machine learning: sequence windows, scalers, the LSTM model and RMSE metrics.

Pure NumPy except :mod:`oefray.ml.model`, the only module that imports Keras/TensorFlow, so that
``windows``, ``scaling`` and ``metrics`` stay cheap to import. Knows nothing of Ray or MLflow.
"""
