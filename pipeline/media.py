"""Where stored media bytes live: S3 (boto3) or a local folder, under content-addressed keys.

The only module that imports boto3; botocore's errors become MediaUnavailable here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Protocol

from events.errors import MediaUnavailable
from pipeline.config import Settings

# Multipart parts of 8 MB, two in flight: boto3's defaults (10 threads) would buffer up to
# 80 MB of a non-seekable stream; from a file it reads each part lazily.
_PART_BYTES = 8 * 1024 * 1024
_COPY_BYTES = 1024 * 1024
# The sender of a WhatsApp message chooses its mimetype: only a bare type/subtype is served.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*")
# Types a browser shows without running the sender's code (not HTML, SVG or text).
_INLINE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf"})

log = logging.getLogger("zapline.media")


def storage_key(sha256: str) -> str:
    """The content-addressed key of some bytes: the same bytes always land in one object."""
    return f"sha256/{sha256[:2]}/{sha256}"


def served_type(mimetype: str | None) -> str:
    """The stored mimetype lower-cased without parameters, or application/octet-stream."""
    kind = (mimetype or "").split(";", 1)[0].strip().lower()
    return kind if _MEDIA_TYPE.fullmatch(kind) else "application/octet-stream"


def shown_inline(content_type: str) -> bool:
    """Whether a served type may open in the browser; any other is sent as a download."""
    return content_type in _INLINE_TYPES or content_type.startswith(("audio/", "video/"))


class MediaStorage(Protocol):
    """Stores and serves media bytes by key."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key` (only complete objects ever are).

        Raises:
            MediaUnavailable: the store did not answer.
        """
        ...

    def put(self, key: str, source: IO[bytes], content_type: str | None) -> None:
        """Store the bytes of a file, from its start, under `key`, all or nothing.

        Raises:
            MediaUnavailable: the store did not take it; nothing is visible under `key`.
        """
        ...

    def url(self, key: str, content_type: str | None) -> str | None:
        """A short-lived URL to fetch the object, or None when we serve the bytes ourselves."""
        ...

    def open(self, key: str) -> IO[bytes]:
        """Open a stored object for reading.

        Raises:
            MediaUnavailable: it cannot be read.
        """
        ...


def storage_from(settings: Settings) -> MediaStorage:
    """S3 when S3_BUCKET is set, the local MEDIA_DIR otherwise."""
    if settings.s3_bucket:
        return S3Storage(settings)
    if settings.production:
        # On Railway web and worker are separate containers: the worker stores where web
        # cannot read, and a redeploy starts from an empty disk.
        log.warning(
            "media are kept in MEDIA_DIR on this container's disk; set S3_BUCKET so web can"
            " serve what the worker stores"
        )
    return LocalStorage(Path(settings.media_dir))


class LocalStorage:
    """A folder: each object a file, written aside and renamed into place."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def put(self, key: str, source: IO[bytes], content_type: str | None) -> None:
        path = self._path(key)
        partial: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            source.seek(0)
            with tempfile.NamedTemporaryFile(
                dir=path.parent, prefix=".partial-", delete=False
            ) as out:
                partial = out.name
                shutil.copyfileobj(source, out, _COPY_BYTES)
                out.flush()
                os.fsync(out.fileno())
            # A rename is atomic: a reader, or a run after a kill, sees the whole file or none.
            os.replace(partial, path)
        except OSError as error:
            if partial is not None:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
            raise MediaUnavailable(f"cannot write {key} to MEDIA_DIR: {error}") from error

    def url(self, key: str, content_type: str | None) -> str | None:
        return None

    def open(self, key: str) -> IO[bytes]:
        try:
            return open(self._path(key), "rb")  # noqa: SIM115 - the caller streams and closes it
        except OSError as error:
            raise MediaUnavailable(f"cannot read {key} from MEDIA_DIR: {error}") from error

    def _path(self, key: str) -> Path:
        return self._root / key


class S3Storage:
    """A private S3 bucket (or an S3-compatible store at S3_ENDPOINT_URL)."""

    def __init__(self, settings: Settings) -> None:
        # Imported here: the local default should not pay for loading boto3.
        import boto3
        import boto3.exceptions
        import botocore.config
        import botocore.exceptions
        from boto3.s3.transfer import TransferConfig

        self._errors: tuple[type[Exception], ...] = (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
            boto3.exceptions.Boto3Error,
        )
        assert settings.s3_bucket is not None
        self._bucket = settings.s3_bucket
        self._url_seconds = settings.media_url_seconds
        config = botocore.config.Config(
            # boto3 presigns with SigV2 unless told otherwise (design.md traps).
            signature_version="s3v4",
            # S3-compatible stores behind a custom endpoint rarely resolve bucket subdomains.
            s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        # A session of our own: boto3's default session is not safe across threads.
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.aws_access_key_id,
            aws_secret_access_key=settings.aws_secret_access_key,
            config=config,
        )
        self._transfer = TransferConfig(
            multipart_threshold=_PART_BYTES,
            multipart_chunksize=_PART_BYTES,
            max_concurrency=2,
        )

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self._bucket, Key=key)
        except self._errors as error:
            if _status(error) == 404:
                return False
            raise MediaUnavailable(f"S3 head {key}: {_describe(error)}") from error
        return True

    def put(self, key: str, source: IO[bytes], content_type: str | None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        source.seek(0)
        try:
            # A multipart upload shows no object until it completes; one a kill interrupts
            # stays invisible (a bucket lifecycle rule aborts incomplete uploads).
            self._client.upload_fileobj(
                source, self._bucket, key, ExtraArgs=extra, Config=self._transfer
            )
        except self._errors as error:
            raise MediaUnavailable(f"S3 upload {key}: {_describe(error)}") from error

    def url(self, key: str, content_type: str | None) -> str | None:
        params = {"Bucket": self._bucket, "Key": key}
        if content_type:
            params["ResponseContentType"] = content_type
        if not (content_type and shown_inline(content_type)):
            params["ResponseContentDisposition"] = "attachment"
        url: str = self._client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=self._url_seconds
        )
        return url

    def open(self, key: str) -> IO[bytes]:
        try:
            body: IO[bytes] = self._client.get_object(Bucket=self._bucket, Key=key)["Body"]
        except self._errors as error:
            raise MediaUnavailable(f"S3 get {key}: {_describe(error)}") from error
        return body


def _status(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    return None


def _describe(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]
