"""Default input limits, in a module light enough for the CLI to import at start-up."""

DEFAULT_MAX_MEGAPIXELS = 100.0  # larger images are skipped before decoding (decompression-bomb guard)
DEFAULT_MAX_FILE_MB = 256.0  # larger files are skipped before reading
DEFAULT_MAX_FILE_BYTES = int(DEFAULT_MAX_FILE_MB * 1e6)
MAX_IMAGE_MEGAPIXELS_SETTING = "--max-image-megapixels"  # how skip reasons name the setting
MAX_FILE_MB_SETTING = "--max-file-mb"
