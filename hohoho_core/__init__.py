"""HOHOHO core: intracranial hemorrhage detection on head CT.

The public API is re-exported here; everything else is an implementation detail.
Heavy modules (torch, captum, cleanlab) load on first use, so `import hohoho_core`
stays cheap for the CLI and for tools that only read DICOM.
"""

from __future__ import annotations

import importlib
from typing import Any

from hohoho_core.labels import ANY_INDEX, CLASSES, SHORT_NAMES, SUBTYPES
from hohoho_core.study import LoadReport, SkippedFile, SkipReason, SliceInfo, Study

# public name -> module that defines it
_LAZY: dict[str, str] = {
    # reading
    "Upload": "dicom",
    "StudyLoadError": "dicom",
    "load_study": "dicom",
    "load_studies": "dicom",
    "iter_studies": "dicom",
    "list_series": "dicom",
    "extract_zip": "dicom",
    "build_index": "rsna",
    "read_labels": "rsna",
    "RsnaIndex": "rsna",
    # a PACS over DICOMweb, and our results as DICOM
    "DicomwebServer": "pacs",
    "PacsError": "pacs",
    "StudyQuery": "pacs",
    "search_studies": "pacs",
    "retrieve_study": "pacs",
    "scan_pacs_study": "pacs",
    "build_sr": "sr",
    "read_sr": "sr",
    # preprocessing
    "WINDOWS": "preprocess",
    "PreprocessConfig": "preprocess",
    "window_hu": "preprocess",
    "stack_neighbours": "preprocess",
    "head_bbox": "preprocess",
    "make_input": "preprocess",
    "StudyCache": "cache",
    # synthetic data
    "generate_dataset": "synthetic",
    "save_montage": "synthetic",
    # models and training blocks
    "MODEL_NAMES": "models",
    "create_model": "models",
    "SliceClassifier": "models",
    "SequenceModel": "models",
    "AsymmetricLoss": "losses",
    "build_loss": "losses",
    "f2_report": "metrics",
    "search_thresholds": "metrics",
    "rsna_log_loss": "metrics",
    "ModelConfig": "weights",
    "WeightsError": "weights",
    "load_weights": "weights",
    "save_weights": "weights",
    # inference and views
    "Predictor": "predict",
    "StudyPrediction": "predict",
    "saliency_map": "explain",
    "randomisation_check": "explain",
    "tsne_2d": "embed",
    # label audit
    "rank_flags": "audit",
    "audit_from_files": "audit",
    "DecisionStore": "store",
    "StoreError": "store",
    "resolve": "review",
    "agreement": "review",
    "export_corrected": "review",
}

__all__ = [
    "ANY_INDEX",
    "CLASSES",
    "SHORT_NAMES",
    "SUBTYPES",
    "LoadReport",
    "SkipReason",
    "SkippedFile",
    "SliceInfo",
    "Study",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hohoho_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hohoho_core.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
