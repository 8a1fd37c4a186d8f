"""A run's training: the model, augmentation, optimizer, placement, the batch feed, the phases and evaluation."""
