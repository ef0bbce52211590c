"""The bundle REST API: staff manage update bundles, devices download them (docs/updates.md).

| endpoint | who |
|---|---|
| ``GET /api/fleet/bundles`` | technician |
| ``GET /api/fleet/bundles/{version}`` (row and manifest) | technician |
| ``PUT /api/fleet/bundles/{version}`` body: uncompressed tar of the bundle | administrator |
| ``DELETE /api/fleet/bundles/{version}`` | administrator |
| ``GET /api/fleet/bundles/{version}/manifest.json`` | device, ``Authorization: Bearer`` token |
| ``GET /api/fleet/bundles/{version}/manifest.sig`` | device, token |
| ``GET /api/fleet/bundles/{version}/files/{path}`` | device, token |

Device downloads are plain files with HTTP Range (Starlette's ``FileResponse``: ``206`` and
``Content-Range`` for a range, ``416`` for one past the end), so a device resumes a broken
download where it stopped. The token (``central.fleet.bundles.BundleTokens``) comes in the
signed ``update.install`` command; a missing, forged or expired token, or one for another
version, is ``403``. Only the manifest, its signature and the files the manifest lists are
served: any other path is ``404``, whatever it contains.

Uploads and deletes are audited by ``central.fleet.bundles.BundleStore`` with the staff
member's user name; role and CSRF checks are the dashboard's (central/dashboard/auth.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from central.dashboard.auth import Administrator, ApiError, Technician
from central.fleet.bundles import BundleStore, BundleStoreError, bundles_of, tokens_of
from yikatong.protocol.update import MANIFEST_NAME, SIGNATURE_NAME

__all__ = ["bundles_router"]


def _api_error(e: BundleStoreError) -> ApiError:
    return ApiError(e.status, e.code, e.message, e.message_zh)


def _token(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        err = ApiError(401, "token_needed", "a download token is needed (Authorization: "
                       "Bearer …)", "需要下载令牌")
        err.headers = {"WWW-Authenticate": "Bearer"}
        raise err
    return value.strip()


def bundles_router(fleet: Any) -> APIRouter:
    """The bundle endpoints over a fleet service's bundle store and download tokens."""
    api = APIRouter(prefix="/api/fleet/bundles")

    def store() -> BundleStore:
        # Opened on first use: a fleet service without tables (tests' fakes) has no bundles.
        if not hasattr(fleet, "tables"):
            raise ApiError(404, "bundles_unavailable", "this central stores no bundles",
                           "此中心服务不保存更新包")
        return bundles_of(fleet)

    @api.get("")
    async def list_bundles(_: Technician) -> dict[str, Any]:
        return {"bundles": store().list_bundles()}

    @api.get("/{version}")
    async def show(version: str, _: Technician) -> dict[str, Any]:
        try:
            manifest = store().manifest(version)
        except BundleStoreError as e:
            raise _api_error(e) from None
        return {"bundle": store().get(version),
                "manifest": manifest.model_dump(mode="json")}

    @api.put("/{version}")
    async def upload(version: str, request: Request, user: Administrator) -> dict[str, Any]:
        try:
            row = await store().upload(version, request.stream(), actor=user.username)
        except BundleStoreError as e:
            raise _api_error(e) from None
        return {"bundle": row, "signature_checked": row["signature_checked"]}

    @api.delete("/{version}")
    async def delete(version: str, user: Administrator) -> dict[str, Any]:
        try:
            return {"deleted": await store().delete(version, actor=user.username)}
        except BundleStoreError as e:
            raise _api_error(e) from None

    def serve(request: Request, version: str, rel: str) -> Response:
        try:
            bundles = store()
            tokens_of(fleet).check(_token(request), version)
            path = bundles.file_path(version, rel)
        except BundleStoreError as e:
            raise _api_error(e) from None
        media = "application/json" if rel.endswith((".json", ".sig")) else \
            "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-store"})

    @api.api_route("/{version}/" + MANIFEST_NAME, methods=["GET", "HEAD"])
    async def manifest_json(version: str, request: Request) -> Response:
        return serve(request, version, MANIFEST_NAME)

    @api.api_route("/{version}/" + SIGNATURE_NAME, methods=["GET", "HEAD"])
    async def manifest_sig(version: str, request: Request) -> Response:
        return serve(request, version, SIGNATURE_NAME)

    @api.api_route("/{version}/files/{path:path}", methods=["GET", "HEAD"])
    async def bundle_file(version: str, path: str, request: Request) -> Response:
        return serve(request, version, path)

    return api
