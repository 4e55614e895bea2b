"""cxrkit's MONAI Label app: trained chest X-ray classifiers (cxrkit run folders) as classification models.

Start it with MONAI Label's own command (always pass ``--conf zoo_source
github``: the default model-zoo source goes online at start)::

    monailabel start_server --app cxrkit/label/app --studies /data/xrays \\
        --conf bundles runs/inat_swav-20240101-120000 --conf zoo_source github --host 127.0.0.1

or with ``cxrkit label serve RUN_DIR --studies /data/xrays``. Models are run
folders given with ``--conf bundles DIR[,DIR]`` or named folders under this
app's ``model/`` folder given with ``--conf models NAME[,NAME]`` (see
``lib/bundles.py``). Each is served as ``/infer/<name>?image=<image id>``; the
image id is the file name without extension. ``{"cam": true}`` in the request
params adds a Grad-CAM label image.
"""

from __future__ import annotations

import logging
from typing import Any, Dict

from fastapi import HTTPException
from lib.bundles import find_bundles
from lib.infers import CXRClassificationInfer, ImageInputError
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

import cxrkit
from cxrkit.label.routes import valid_image_id
from cxrkit.serve.batching import QueueFullError

logger = logging.getLogger(__name__)

#: radiograph files a studies folder may hold (added to MONAI_LABEL_DATASTORE_FILE_EXT).
RADIOGRAPH_EXTENSIONS = ("*.png", "*.jpg", "*.jpeg", "*.dcm")


class CXRKitApp(MONAILabelApp):
    """Serves trained cxrkit bundles as MONAI Label classification models (no training, no segmentation).

    Args:
        app_dir: this folder.
        studies: a folder of PNG / JPEG / DICOM radiographs, or a DICOMweb URL.
        conf: ``--conf`` options: ``bundles`` and/or ``models`` (see ``lib/bundles.py``).
    """

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        self.bundles = find_bundles(app_dir, conf or {})
        for name, path in self.bundles.items():
            logger.info("+++ cxrkit model %s => %s", name, path)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"cxrkit - chest X-ray classification ({cxrkit.__version__})",
            description="Trained cxrkit chest X-ray classifiers with Grad-CAM evidence. Research use only.",
            version=cxrkit.__version__,
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        extensions = list(settings.MONAI_LABEL_DATASTORE_FILE_EXT)
        extensions += [e for e in RADIOGRAPH_EXTENSIONS if e not in extensions]
        logger.info("Init Datastore for: %s (%s)", self.studies, ", ".join(extensions))
        return LocalDatastore(
            self.studies,
            extensions=extensions,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, path in self.bundles.items():
            task = CXRClassificationInfer(str(path), self.conf)
            if not task.is_valid():
                raise ValueError(f"{path}: MONAI Label cannot load this bundle (see the log above)")
            infers[name] = task
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {}  # train with `cxrkit run training`; this app only serves

    def _download_dcmqi_tools(self) -> None:
        # DICOM SEG conversion tools: a classification app writes no segmentation, and the server stays offline
        logger.info("DICOM SEG tools not needed for classification; nothing downloaded")

    def infer(self, request: Dict[str, Any], datastore: Any = None) -> Dict[str, Any]:
        """Run one classification of a datastore image; unknown models or images and unreadable files are 4xx answers.

        ``request["image"]`` must be the id of an image in the datastore: a file path is never opened, whether it
        exists or not.

        Raises:
            fastapi.HTTPException: 404 for an unknown model or image id, 422 for an unreadable image, 503 (with
                ``Retry-After``) when the model's inference queue is full.
        """
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(
                status_code=404, detail=f"no model {model!r}; this server has {', '.join(self._infers) or 'none'}"
            )
        image = request.get("image")
        store = datastore or self.datastore()
        uri = ""
        if isinstance(image, str) and valid_image_id(image):
            try:
                uri = store.get_image_uri(image)
            except Exception:  # noqa: BLE001 - a remote store may fail for an unknown id in many ways
                logger.info("an image id was not found", exc_info=True)
        if not uri:  # never a path from the client: the same answer whatever exists on disk
            raise HTTPException(status_code=404, detail="no such image in the datastore; GET /datastore/?output=all "
                                "lists them")
        request = {**request, "image": uri}
        try:
            return super().infer(request, datastore)
        except ImageInputError as exc:
            raise HTTPException(status_code=422, detail=exc.msg) from None
        except QueueFullError as exc:  # the model's inference queue is full: come back later
            raise HTTPException(status_code=503, detail=str(exc),
                                headers={"Retry-After": str(exc.retry_after)}) from None
