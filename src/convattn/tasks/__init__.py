"""Task models and data for segmentation and detection (``convattn segment`` / ``convattn detect``)."""
