"""The admin API: its own token, runtime registration, rollouts and replica resync."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.settings import Settings
from tests.unit.conftest import make_adapter_dir
from tests.unit.fakes import FakeVllm

TOKEN = "admin-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CHAT = "/v1/chat/completions"


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"admin_token": SecretStr(TOKEN)})


@pytest.fixture
def admin(admin_settings: Settings, fake: FakeVllm) -> Iterator[TestClient]:
    app = create_app(admin_settings, transport=fake.transport(), metrics=Metrics())
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_admin_api_is_off_without_a_configured_token(client: TestClient) -> None:
    response = client.get("/admin/adapters", headers=AUTH)
    assert response.status_code == 403
    assert "SLM_GATEWAY_ADMIN_TOKEN" in response.json()["error"]["message"]


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"},
                                     {"authorization": TOKEN}])
def test_admin_api_refuses_a_missing_or_wrong_token(
    admin: TestClient, headers: dict[str, str]
) -> None:
    response = admin.get("/admin/adapters", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_listing_shows_adapters_and_where_they_are_loaded(
    admin: TestClient, fake: FakeVllm
) -> None:
    admin.post(CHAT, json=chat("legal"))
    listing = admin.get("/admin/adapters", headers=AUTH).json()
    by_name = {a["name"]: a for a in listing["adapters"]}
    assert by_name["law-v1"]["loaded_on"] == ["r0"]
    assert by_name["money-v1"]["loaded_on"] == []
    assert listing["replicas"]["r0"]["resident"] == {"law-v1": 1}


def test_registering_a_shadow_adapter_loads_it_without_routing_the_domain_to_it(
    admin: TestClient, fake: FakeVllm, adapter_root: Path
) -> None:
    path = make_adapter_dir(adapter_root, "law2")
    response = admin.post("/admin/adapters", headers=AUTH,
                          json={"name": "law-v2", "domain": "legal", "path": str(path)})
    assert response.status_code == 200, response.text
    assert response.json()["replicas"] == {"r0": "loaded"}
    assert "law-v2" in fake.loaded
    assert admin.post(CHAT, json=chat("legal")).headers["x-slm-adapter"] == "law-v1"
    assert admin.post(CHAT, json=chat("law-v2")).headers["x-slm-adapter"] == "law-v2"


def test_promoting_a_shadow_adapter_retires_and_unloads_the_previous_one(
    admin: TestClient, fake: FakeVllm, adapter_root: Path
) -> None:
    admin.post(CHAT, json=chat("legal"))  # law-v1 resident
    path = make_adapter_dir(adapter_root, "law2")
    admin.post("/admin/adapters", headers=AUTH,
               json={"name": "law-v2", "domain": "legal", "path": str(path)})
    response = admin.post("/admin/adapters/law-v2/promote", headers=AUTH)
    assert response.status_code == 200
    assert response.json()["retired"] == ["law-v1"]
    assert fake.unload_calls == ["law-v1"]
    assert admin.post(CHAT, json=chat("legal")).headers["x-slm-adapter"] == "law-v2"
    # A retired adapter is no longer servable by name.
    assert admin.post(CHAT, json=chat("law-v1")).status_code == 404


def test_a_new_version_under_the_same_name_is_swapped_in_place(
    admin: TestClient, fake: FakeVllm, adapter_root: Path
) -> None:
    admin.post(CHAT, json=chat("legal"))
    path = make_adapter_dir(adapter_root, "law-new")
    response = admin.post("/admin/adapters", headers=AUTH, json={
        "name": "law-v1", "domain": "legal", "path": str(path), "status": "active"})
    assert response.status_code == 200, response.text
    assert response.json()["adapter"]["version"] == 2
    assert response.json()["replicas"] == {"r0": "upgraded"}
    assert fake.inplace_loads[-1] == "law-v1" and fake.unload_calls == []
    listing = admin.get("/admin/adapters", headers=AUTH).json()
    assert listing["replicas"]["r0"]["resident"] == {"law-v1": 2}


@pytest.mark.parametrize("path", ["/etc", "{root}/../outside"])
def test_adapter_paths_outside_the_allowed_directories_are_refused(
    admin: TestClient, adapter_root: Path, path: str
) -> None:
    outside = adapter_root.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "adapter_config.json").write_text("{}")
    given = path.format(root=adapter_root)
    response = admin.post("/admin/adapters", headers=AUTH, json={
        "name": "evil", "domain": "legal", "path": given})
    assert response.status_code == 403  # forbidden, not a conflict with the registry's state
    error = response.json()["error"]
    assert error["type"] == "permission_error" and error["param"] == "path"
    assert "outside the allowed adapter directories" in error["message"]
    # It names the path as sent and the directories as configured, nothing resolved.
    assert f"'{given}'" in error["message"] and str(adapter_root) in error["message"]
    assert str(outside.resolve()) not in error["message"].replace(given, "")


def test_the_packaged_adapter_directory_is_named_by_its_repository_path(
    admin_settings: Settings, fake: FakeVllm
) -> None:
    from adapters.registry import PUBLISHED_DIR

    settings = admin_settings.model_copy(update={"adapters": admin_settings.adapters.model_copy(
        update={"allowed_dirs": [PUBLISHED_DIR, *admin_settings.adapters.allowed_dirs]})})
    app = create_app(settings, transport=fake.transport(), metrics=Metrics())
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/admin/adapters", headers=AUTH, json={
            "name": "evil", "domain": "legal", "path": "/etc"})
    assert response.status_code == 403
    message = response.json()["error"]["message"]
    assert "adapters/published (packaged)" in message and str(PUBLISHED_DIR) not in message


def test_unknown_domain_and_unknown_adapter_are_clear_errors(admin: TestClient) -> None:
    response = admin.post("/admin/adapters", headers=AUTH,
                          json={"name": "x", "domain": "astrology", "path": "/tmp"})
    assert response.status_code == 409
    assert "unknown domain" in response.json()["error"]["message"]
    assert admin.post("/admin/adapters/nope/promote", headers=AUTH).status_code == 404
    bad = admin.post("/admin/adapters", headers=AUTH, json={"name": "x", "oops": 1})
    assert bad.status_code == 400


def test_unloaded_adapter_is_loaded_again_on_the_next_request(
    admin: TestClient, fake: FakeVllm
) -> None:
    admin.post(CHAT, json=chat("legal"))
    assert admin.post("/admin/adapters/law-v1/unload", headers=AUTH).json()["replicas"] == {
        "r0": "unloaded"}
    assert "law-v1" not in fake.loaded
    assert admin.post(CHAT, json=chat("legal")).status_code == 200
    assert fake.load_calls == ["law-v1", "law-v1"]


def test_load_warms_a_replica_and_rejects_unknown_replicas_and_retired_adapters(
    admin: TestClient, fake: FakeVllm
) -> None:
    response = admin.post("/admin/adapters/law-v1/load", headers=AUTH, params={"replica": "r0"})
    assert response.status_code == 200, response.text
    assert response.json()["replicas"] == {"r0": "loaded"}
    assert fake.load_calls == ["law-v1"]
    again = admin.post("/admin/adapters/law-v1/load", headers=AUTH)
    assert again.json()["replicas"] == {"r0": "resident"}
    unknown = admin.post("/admin/adapters/law-v1/load", headers=AUTH, params={"replica": "r9"})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "replica"
    admin.post("/admin/adapters/money-v1/retire", headers=AUTH)
    retired = admin.post("/admin/adapters/money-v1/load", headers=AUTH)
    assert retired.status_code == 409
    assert fake.load_calls == ["law-v1"]


def test_active_adapters_are_preloaded_and_reloaded_when_a_replica_restarts(
    settings: Settings, fake: FakeVllm
) -> None:
    preload = settings.model_copy(
        update={"adapters": settings.adapters.model_copy(update={"preload": True})}
    )
    app = create_app(preload, transport=fake.transport(), metrics=Metrics())
    with TestClient(app, raise_server_exceptions=False) as client:
        gateway = app.state.gateway
        client.portal.call(_wait_for_background, gateway)
        assert sorted(fake.load_calls) == ["law-v1", "money-v1"]
        # The replica goes away and comes back empty.
        fake.healthy = False
        client.portal.call(gateway.pool.check_all)
        fake.healthy, fake.loaded = True, set()
        client.portal.call(gateway.pool.check_all)
        client.portal.call(_wait_for_background, gateway)
        assert fake.loaded == {"law-v1", "money-v1"}
        assert len(fake.load_calls) == 4


async def _wait_for_background(gateway: object) -> None:
    import asyncio

    tasks = gateway.background_tasks()  # type: ignore[attr-defined]
    if tasks:
        await asyncio.gather(*tasks)
