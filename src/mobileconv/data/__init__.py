"""Datasets (digits, synthetic, ImageFolder, CIFAR-10/100), batched transforms and deterministic sharding."""
from .datasets import (DATA_HELP, INTERPOLATIONS, MIN_CROP_PCT, TRAIN_INTERPOLATIONS, DataInfo,  # noqa: F401
                       ImageFolderDataset, RandomResizedCrop, TensorImageDataset, build_datasets, build_test_dataset,
                       check_crop, is_crop_pct, limit_samples, load_digits, load_image, make_synthetic,
                       preferred_img_size)
from .sampler import ShardedBatchSampler  # noqa: F401
from .transforms import BatchTransform, MixupCutmix, one_hot_smooth  # noqa: F401
