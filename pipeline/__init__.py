"""Shards -> decoded, sampled, cropped and masked training batches on the training device.

- `pipeline.config.DataConfig`: every setting, checked at start.
- `pipeline.loader.DaliLoader`: the DALI path (NVDEC or CPU decoding), a PyTorch iterator with exact resume.
- `pipeline.reference.ReferenceLoader`: webdataset + PyAV + DataLoader workers, for comparison and CPU training.
- `pipeline.sampling` / `pipeline.masking`: frame indices, crop boxes and masks, one definition for both loaders.
"""
