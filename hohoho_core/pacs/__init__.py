"""Studies from a PACS over DICOMweb: search (QIDO-RS), retrieve (WADO-RS), store (STOW-RS).

Modules, in the order data flows: ``server`` (URL and credentials from settings, the
`PacsError`), ``_http`` (one client per server; failures -> `PacsError`), ``search``
(`StudyQuery` -> `StudyMatch` list), ``retrieve`` (a study's instances -> `Upload` list ->
the ordinary reader), ``store`` (our DICOM objects back to the server).
"""

from hohoho_core.pacs.retrieve import (
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_STUDY_BYTES,
    RetrieveLimits,
    load_pacs_study,
    retrieve_ahead,
    retrieve_study,
    scan_pacs_study,
)
from hohoho_core.pacs.search import DEFAULT_SEARCH_LIMIT, StudyMatch, StudyQuery, search_studies
from hohoho_core.pacs.server import DicomwebServer, PacsError, server_from_env
from hohoho_core.pacs.store import store_instances

__all__ = [
    "DEFAULT_MAX_INSTANCES",
    "DEFAULT_MAX_STUDY_BYTES",
    "DEFAULT_SEARCH_LIMIT",
    "DicomwebServer",
    "PacsError",
    "RetrieveLimits",
    "StudyMatch",
    "StudyQuery",
    "load_pacs_study",
    "retrieve_ahead",
    "retrieve_study",
    "scan_pacs_study",
    "search_studies",
    "server_from_env",
    "store_instances",
]
