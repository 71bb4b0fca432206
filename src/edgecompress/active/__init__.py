"""Active learning: which unlabeled images to label next (``strategies``), and the selection a person labels (``select``)."""
