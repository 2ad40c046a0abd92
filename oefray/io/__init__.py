"""Input/output: BIDS datasets (nibabel), features Parquet and manifests (pyarrow).

Knows nothing of Ray, MLflow or Keras.
"""
