"""The relabel round trip's upload: preview a tool's export once per upload, then apply it.

Not a page (app.py's ``st.navigation`` lists the pages); a helper of pages/export.py. The
browser names the upload, so that name is never a path: the bytes go to
:func:`curation.relabel.import_annotations_from_bytes`, which parses them in memory, writes
them nowhere and uses only the name's last component, in messages and ``decision_source``.

The dry run's result is kept in ``st.session_state`` under :data:`PREVIEW_KEY`, keyed by
the upload's file id and the session's data version: reruns (any widget change) show it
without reading the file again, and a write to the dataset (the apply) makes it read afresh.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

from curation.relabel import ImportResult, import_annotations_from_bytes
from pages.common import USER_ERRORS, one_line

PREVIEW_KEY = "rl_upload_preview"


@dataclass(frozen=True)
class UploadPreview:
    """What a dry run of one upload found.

    Attributes:
        key: (dataset name, label field, upload file id, data version) it was computed for.
        name: the upload's name as the page may show it: the last component, printable.
        result: the dry run's :class:`~curation.relabel.ImportResult`; None when refused.
        error: why the file cannot be used, one line naming the upload; None when read.
    """

    key: tuple[str, str, str, int]
    name: str
    result: ImportResult | None = None
    error: str | None = None


def preview_upload(state: MutableMapping, dataset, upload, *, label_field: str, data_version: int) -> UploadPreview:
    """The dry run of ``upload`` (what ``st.file_uploader`` returned), read once per upload.

    Args:
        state: where the preview is kept between reruns (``st.session_state``).
        dataset: the FiftyOne dataset the corrections are for.
        upload: a file with ``file_id``, ``name`` (from the browser) and ``getvalue()``.
        label_field: the classification or detections field to correct.
        data_version: the session's data version; a new one reads the file again.

    Returns:
        The kept preview if ``state`` holds one for this upload, dataset and data version;
        otherwise a new one, stored in ``state``. A ``CurationError`` or ``OSError`` becomes
        :attr:`UploadPreview.error`; any other exception propagates.
    """
    key = (dataset.name, label_field, upload.file_id, data_version)
    kept = state.get(PREVIEW_KEY)
    if isinstance(kept, UploadPreview) and kept.key == key:
        return kept
    try:
        result = import_annotations_from_bytes(dataset, upload.getvalue(), label_field=label_field,
                                               name_hint=upload.name, dry_run=True)
    except USER_ERRORS as error:
        preview = UploadPreview(key, _shown_name(upload.name), error=one_line(error))
    else:
        preview = UploadPreview(key, _shown_name(upload.name), result=result)
    state[PREVIEW_KEY] = preview
    return preview


def apply_upload(dataset, upload, *, label_field: str) -> ImportResult:
    """Apply ``upload``'s corrections to the dataset (read from memory, as the preview was).

    Raises:
        AnnotationFileError, CurationInputError, ImportInterruptedError: as
            :func:`curation.relabel.import_annotations_from_bytes`.
    """
    return import_annotations_from_bytes(dataset, upload.getvalue(), label_field=label_field, name_hint=upload.name)


def _shown_name(name: str) -> str:
    """The upload's name for the page: its last component, printable, at most 120 characters."""
    last = str(name or "").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(char for char in last if char.isprintable()).strip()[:120] or "upload"
