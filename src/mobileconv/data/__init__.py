"""Datasets (digits, synthetic, ImageFolder, CIFAR-10/100), batched transforms and deterministic sharding."""
from .datasets import (DATA_HELP, DataInfo, ImageFolderDataset, TensorImageDataset, build_datasets,  # noqa: F401
                       INTERPOLATIONS, check_crop, limit_samples, load_digits, load_image, make_synthetic,
                       preferred_img_size)
from .sampler import ShardedBatchSampler  # noqa: F401
from .transforms import BatchTransform, MixupCutmix, one_hot_smooth  # noqa: F401
