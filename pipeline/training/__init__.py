"""Training parts that do not depend on TensorFlow: device placement, the optimizer, the batch feed."""
