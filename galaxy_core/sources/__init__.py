"""What comes from outside the process: HTTP fetches with deadlines and the host policy, Galaxy
Zoo catalogues, SDSS cutouts, downloads and the stand-in cutout server, decoding untrusted image
files, and the dataset folder's layout (the one owner of its file names).

Imports only ``galaxy_core.base``.
"""

from galaxy_core.sources.catalogue import CatalogueFormat, read_catalogue
from galaxy_core.sources.catalogue_io import CatalogueError
from galaxy_core.sources.cutouts import fetch_cutout
from galaxy_core.sources.download import DownloadProgress, DownloadReport, download_cutouts
from galaxy_core.sources.fetch import UrlPolicy
from galaxy_core.sources.folder import CATALOGUE_NAME, IMAGES_DIR, DatasetError, DatasetFolder, list_datasets
from galaxy_core.sources.hosts import HostPolicy
from galaxy_core.sources.images import MAX_DECODED_SIDE, ImageLoadError, load_image

__all__ = [
    "CATALOGUE_NAME", "CatalogueError", "CatalogueFormat", "DatasetError", "DatasetFolder",
    "DownloadProgress", "DownloadReport", "HostPolicy", "IMAGES_DIR", "ImageLoadError", "MAX_DECODED_SIDE",
    "UrlPolicy", "download_cutouts", "fetch_cutout", "list_datasets", "load_image", "read_catalogue",
]
