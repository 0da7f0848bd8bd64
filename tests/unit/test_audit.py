"""The audit log (hash chain, verification, auditors' API, what is audited and how) and the
sign-in limits (lockout per user and per address, the same work for unknown users, key
rotation of sessions and CSRF tokens)."""

from __future__ import annotations

import multiprocessing
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from radpipe.common import auth as auth_module
from radpipe.common.audit import GENESIS, AuditLog, entry_hash, keyed
from radpipe.common.auth import (
    ADDRESS_FAILURES,
    USER_FAILURES,
    AuthService,
    LoginLocked,
    Principal,
)
from radpipe.common.context import Context
from radpipe.common.docstore import open_embedded
from radpipe.common.errors import Unauthorized

from ..dicom import ct_series, read
from .test_ingest_api import stow

ANA = Principal("ana", "radiologist", "session")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _write(log: AuditLog, count: int) -> None:
    for n in range(count):
        log.append("ana", "radiologist", "study.view", f"s{n}", {"n": n, "at": datetime.now(UTC)})


# -- the chain --------------------------------------------------------------------------------


def test_entries_are_chained_by_hash_and_sequence(ctx: Context) -> None:
    log = AuditLog(ctx.documents)
    _write(log, 3)
    entries = list(log.chain())
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev"] == GENESIS
    assert [e["prev"] for e in entries[1:]] == [e["hash"] for e in entries[:2]]
    assert all(entry_hash(e) == e["hash"] for e in entries)
    assert isinstance(entries[0]["detail"]["at"], str)  # stored as hashed: JSON values
    result = log.verify()
    assert result.ok and result.checked == 3, result.problems


def test_an_edited_entry_is_named(ctx: Context) -> None:
    log = AuditLog(ctx.documents)
    _write(log, 4)
    log.entries.update_one({"seq": 2}, {"$set": {"actor": "mallory"}})
    result = log.verify()
    assert result.problems == [
        "entry seq 2 (study.view by mallory) was edited: its content no longer matches its hash"
    ]


def test_an_edited_entry_with_a_recomputed_hash_is_named_by_the_next_one(ctx: Context) -> None:
    log = AuditLog(ctx.documents)
    _write(log, 3)
    forged = log.entries.find_one({"seq": 2})
    forged["target"] = "elsewhere"
    log.entries.update_one(
        {"seq": 2}, {"$set": {"target": "elsewhere", "hash": entry_hash(forged)}}
    )
    assert log.verify().problems == [
        "entry seq 2 was replaced: entry seq 3's prev does not match its hash"
    ]


def test_a_deleted_entry_is_named(ctx: Context) -> None:
    log = AuditLog(ctx.documents)
    _write(log, 5)
    log.entries.delete_one({"seq": 3})
    assert log.verify().problems == ["entry seq 3 missing: deleted"]


def test_deleting_the_newest_entries_is_seen_from_the_head(ctx: Context) -> None:
    log = AuditLog(ctx.documents)
    _write(log, 5)
    log.entries.delete_one({"seq": 5})
    log.entries.delete_one({"seq": 4})
    assert log.verify().problems == [
        "entries seq 4 to 5 missing: deleted from the end (the head names a later entry)"
    ]


def test_entries_from_before_the_chain_are_listed_and_counted(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    log = AuditLog(ctx.documents)
    old = datetime(2026, 1, 5, tzinfo=UTC)
    log.entries.insert_one(
        {"_id": "a1b2c3", "at": old, "actor": "x", "role": "admin", "action": "user.add",
         "target": "ana", "detail": {}}
    )  # fmt: skip
    _write(log, 2)
    result = log.verify()
    assert result.ok and (result.checked, result.unchained) == (2, 1)
    page = client.get("/api/audit", headers=bearer(tokens["auditor"])).json()
    assert [e["target"] for e in page["entries"]] == ["s1", "s0", "ana"]


def test_radpipe_audit_verify_exits_1_naming_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radpipe.cli import main

    monkeypatch.setenv("RADPIPE_DATA_DIR", str(tmp_path / "data"))
    log = AuditLog(open_embedded(tmp_path / "data" / "documents", "radpipe"))
    _write(log, 4)
    runner = CliRunner()
    good = runner.invoke(main, ["audit", "verify"])
    assert good.exit_code == 0 and "audit log intact: 4 entries" in good.output
    log.entries.update_one({"seq": 1}, {"$set": {"detail.n": 7}})
    log.entries.delete_one({"seq": 3})
    bad = runner.invoke(main, ["audit", "verify"])
    assert bad.exit_code == 1
    assert "BROKEN: entry seq 1 (study.view by ana) was edited" in bad.output
    assert "BROKEN: entry seq 3 missing: deleted" in bad.output


def _append_many(folder: str, worker: int, count: int) -> None:
    log = AuditLog(open_embedded(Path(folder), "radpipe"))
    for n in range(count):
        log.append(f"w{worker}", "radiologist", "study.view", f"{worker}-{n}", {})


def test_writers_in_several_processes_make_one_chain(tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    open_embedded(folder, "radpipe").close()
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_append_many, args=(str(folder), w, 25)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    log = AuditLog(open_embedded(folder, "radpipe"))
    result = log.verify()
    assert result.ok and result.checked == 100, result.problems
    assert sorted(e["target"] for e in log.chain()) == sorted(
        f"{w}-{n}" for w in range(4) for n in range(25)
    )


# -- the auditors' API ------------------------------------------------------------------------


def test_get_api_audit_filters_and_pages_for_auditors_only(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    auth = AuthService(ctx.documents)
    for n in range(5):
        auth.audit(ANA, "study.view", f"s{n}")
    auth.audit(Principal("bob", "oncall", "token"), "alert.ack", "a1")
    url = "/api/audit"
    for role in ("admin", "radiologist", "manager"):
        assert client.get(url, headers=bearer(tokens[role])).status_code == 403
    auditor = bearer(tokens["auditor"])
    page = client.get(url, params={"actor": "ana", "limit": 2}, headers=auditor).json()
    assert page["total"] == 5 and [e["target"] for e in page["entries"]] == ["s4", "s3"]
    second = client.get(url, params={"actor": "ana", "limit": 2, "offset": 2}, headers=auditor)
    assert [e["target"] for e in second.json()["entries"]] == ["s2", "s1"]
    acks = client.get(url, params={"action": "alert.ack"}, headers=auditor).json()
    assert [(e["actor"], e["target"]) for e in acks["entries"]] == [("bob", "a1")]
    assert {"seq", "prev", "hash", "at", "role", "detail"} <= set(acks["entries"][0])
    assert client.get(url, params={"target": "s0"}, headers=auditor).json()["total"] == 1
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert client.get(url, params={"since": future}, headers=auditor).json()["total"] == 0
    until_past = client.get(url, params={"until": "2000-01-01T00:00:00"}, headers=auditor)
    assert until_past.json()["total"] == 0
    assert client.get(url, params={"limit": 501}, headers=auditor).status_code == 422
    reads = client.get(url, params={"action": "audit.read"}, headers=auditor).json()
    assert reads["total"] >= 6 and reads["entries"][-1]["actor"] == "test-auditor"
    assert AuditLog(ctx.documents).verify().ok


# -- what is audited, and how -----------------------------------------------------------------


def _deidentified(client: TestClient, ctx: Context, tokens: dict[str, str]) -> bytes:
    from radpipe.deid.service import deidentify_study
    from radpipe.deid.stability import check_stable

    series = ct_series()[:2]
    assert stow(client, tokens["modality"], series).status_code == 200
    [study] = client.get("/api/studies", headers=bearer(tokens["radiologist"])).json()["studies"]
    ctx.settings.study_stable_seconds = 0
    check_stable(ctx, study["id"])
    deidentify_study(ctx, study["id"])
    return series[0]


def test_wado_by_original_uid_is_an_audited_identity_lookup(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    original = read(_deidentified(client, ctx, tokens))
    source = str(original.StudyInstanceUID)
    path = f"/dicom-web/studies/{source}/metadata"
    json_ = {"Accept": "application/dicom+json"}
    for role in ("admin", "manager", "auditor", "modality"):
        assert client.get(path, headers={**bearer(tokens[role]), **json_}).status_code == 403
    answer = client.get(path, headers={**bearer(tokens["oncall"]), **json_})
    assert answer.status_code == 200
    deid_study = answer.json()[0]["0020000D"]["Value"][0]
    assert deid_study != source
    log = ctx.documents.collection("audit")
    [lookup] = log.find({"action": "identity.lookup"})
    assert lookup["actor"] == "test-oncall"
    assert lookup["target"] == f"/dicom-web/studies/{deid_study}/metadata"
    assert lookup["detail"]["uids"] == [keyed(ctx.settings.secret, source)]
    # By the de-identified UID it is an ordinary read.
    client.get(f"/dicom-web/studies/{deid_study}/metadata", headers=bearer(tokens["oncall"]))
    reads = [e["target"] for e in log.find({"action": "dicomweb.read"})]
    assert f"/dicom-web/studies/{deid_study}/metadata" in reads
    everything = str(list(log.find({})))
    assert source not in everything and str(original.PatientID) not in everything


def test_qido_queries_are_audited_with_identifying_values_keyed(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    params = {"PatientID": "MRN-4411", "PatientName": "Doe^Jane", "Modality": "CT", "limit": 5}
    answer = client.get("/dicom-web/studies", params=params, headers=bearer(tokens["resident"]))
    assert answer.status_code == 200
    [entry] = ctx.documents.collection("audit").find({"action": "dicomweb.read"})
    master = ctx.settings.secret
    assert entry["target"] == "/dicom-web/studies"
    assert entry["detail"]["query"] == {
        "PatientID": keyed(master, "MRN-4411"),
        "PatientName": keyed(master, "Doe^Jane"),
        "Modality": "CT",
        "limit": "5",
    }
    assert "MRN-4411" not in str(entry) and "Doe" not in str(entry)


def test_study_views_logins_and_logouts_are_audited(client: TestClient, ctx: Context) -> None:
    AuthService(ctx.documents).add_user("ana", "radiologist", "correct horse battery")
    client.post("/login", data={"username": "ana", "password": "wrong"})
    client.post("/login", data={"username": "ana", "password": "correct horse battery"})
    page = client.get("/")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
    client.post(f"/logout?csrf={csrf}")
    actions = [e["action"] for e in AuditLog(ctx.documents).chain()]
    assert actions[:2] == ["auth.login.failed", "auth.login"] and actions[-1] == "auth.logout"
    assert "studies.list" in actions[2:-1], actions


def test_an_admin_signs_in_to_the_admin_screen_not_the_worklist(
    client: TestClient, ctx: Context
) -> None:
    AuthService(ctx.documents).add_user("root", "admin", "a long admin password")
    answer = client.post(
        "/login",
        data={"username": "root", "password": "a long admin password"},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/admin"
    admin_page = client.get("/admin")
    assert admin_page.status_code == 200 and '<a href="/">Worklist</a>' not in admin_page.text
    assert client.get("/static/admin.js").status_code == 200
    root = client.get("/", follow_redirects=False)  # no worklist: back to the admin screen
    assert (root.status_code, root.headers["location"]) == (303, "/admin")
    assert client.get("/api/studies").status_code == 403


# -- sign-in limits ---------------------------------------------------------------------------


def test_a_user_is_locked_after_repeated_failures_across_processes(ctx: Context) -> None:
    AuthService(ctx.documents).add_user("ana", "radiologist", "correct horse battery")
    for _ in range(USER_FAILURES):
        with pytest.raises(Unauthorized):
            AuthService(ctx.documents).login("ana", "wrong", "10.0.0.1")
    # Another process (its own store connection) sees the lock: it lives in the store.
    other = open_embedded(ctx.settings.data_dir / "documents", ctx.settings.mongo_database)
    with pytest.raises(LoginLocked) as locked:
        AuthService(other).login("ana", "correct horse battery", "10.0.0.2")
    assert "too many failed sign-ins for this user: try again after" in locked.value.message
    assert 0 < locked.value.retry_after <= 15 * 60 + 1
    actions = [e["action"] for e in AuditLog(ctx.documents).chain()]
    assert actions == ["auth.login.failed"] * USER_FAILURES + ["auth.login.locked"]
    # An admin lifts it; the next good password opens a session.
    assert AuthService(ctx.documents).unlock("ana")
    assert AuthService(ctx.documents).login("ana", "correct horse battery", "10.0.0.2")


def test_a_lock_ends_after_its_time(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = AuthService(ctx.documents)
    auth.add_user("ana", "radiologist", "correct horse battery")
    for _ in range(USER_FAILURES):
        with pytest.raises(Unauthorized):
            auth.login("ana", "wrong")
    later = datetime.now(UTC) + auth_module.LOCKOUT + timedelta(seconds=1)
    monkeypatch.setattr(auth_module, "now", lambda: later)
    assert auth.login("ana", "correct horse battery")


def test_an_address_is_locked_whatever_names_it_tries(ctx: Context) -> None:
    auth = AuthService(ctx.documents)
    auth.add_user("ana", "radiologist", "correct horse battery")
    for n in range(ADDRESS_FAILURES):
        with pytest.raises(Unauthorized):
            auth.login(f"guess{n}", "wrong", "203.0.113.9")
    with pytest.raises(LoginLocked, match="for this address"):
        auth.login("ana", "correct horse battery", "203.0.113.9")
    assert auth.login("ana", "correct horse battery", "198.51.100.1")  # elsewhere: fine


def test_login_answers_429_with_retry_after_and_the_time(client: TestClient, ctx: Context) -> None:
    AuthService(ctx.documents).add_user("ana", "radiologist", "correct horse battery")
    for _ in range(USER_FAILURES):
        wrong = client.post(
            "/login", data={"username": "ana", "password": "nope"}, follow_redirects=False
        )
        assert wrong.headers["location"] == "/login?error=1"
    locked = client.post("/login", data={"username": "ana", "password": "correct horse battery"})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    assert re.search(r"try again after \d\d:\d\d:\d\d UTC", locked.text)
    assert "radpipe_session" not in locked.cookies


def test_unknown_users_cost_one_argon2_verification_too(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = AuthService(ctx.documents)
    auth.add_user("ana", "radiologist", "correct horse battery")
    auth.disable_user("ana")
    verified: list[str] = []
    real = auth_module._hasher

    class Counting:
        def verify(self, hash_: str, password: str) -> bool:
            verified.append(hash_)
            return real.verify(hash_, password)

    monkeypatch.setattr(auth_module, "_hasher", Counting())
    for name, password in (("nobody", "whatever"), ("ana", "correct horse battery")):
        with pytest.raises(Unauthorized, match="wrong user name or password"):
            auth.login(name, password)
    assert len(verified) == 2 and verified[0] == auth_module._DUMMY_HASH
    assert verified[1].startswith("$argon2id$")


# -- key rotation -----------------------------------------------------------------------------


def test_rotating_the_secret_key_keeps_tokens_and_sessions_and_renews_csrf(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    from pydantic import SecretStr

    AuthService(ctx.documents).add_user("ana", "radiologist", "correct horse battery")
    client.post("/login", data={"username": "ana", "password": "correct horse battery"})
    page = client.get("/")
    old_csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
    ctx.settings.secret_key = SecretStr("e" * 8 + "0123456789abcdef" * 3 + "7f3a9c1d")
    if hasattr(ctx.settings, "_master"):  # the master secret, cached once read
        ctx.settings._master = None
    assert client.get("/api/studies").status_code == 200  # the session survives
    assert client.get("/api/studies", headers=bearer(tokens["radiologist"])).status_code == 200
    stale = client.post(f"/logout?csrf={old_csrf}")
    assert stale.status_code == 403 and "reload the page" in stale.json()["detail"]
    fresh = re.search(r'name="csrf-token" content="([0-9a-f]+)"', client.get("/").text).group(1)  # type: ignore[union-attr]
    assert fresh != old_csrf
    assert client.post(f"/logout?csrf={fresh}", follow_redirects=False).status_code == 303


def test_an_export_to_the_pacs_is_audited(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import AnyHttpUrl

    from radpipe.ingest import export

    from .test_stages import analyzed

    study_id = analyzed(ctx, 0.9)
    deid = next(iter(ctx.objects.list(ctx.buckets["deid"])))  # stands in for a result object
    data = ctx.objects.get(ctx.buckets["deid"], deid)
    ctx.objects.put(ctx.buckets["results"], f"{study_id}/result.dcm", data)
    sent: list[str] = []

    def fake_stow(url: str, headers: dict[str, str], items: list) -> tuple[set[str], list[str]]:
        sent.extend(key for key, _ in items)
        return {key for key, _ in items}, []

    monkeypatch.setattr(export, "_stow", fake_stow)
    ctx.settings.export_stow_url = AnyHttpUrl("https://pacs.example.org/dicom-web")
    export.export_study(ctx, study_id)
    [entry] = ctx.documents.collection("audit").find({"action": "export.pacs"})
    assert (entry["actor"], entry["role"], entry["target"]) == ("exporter", "system", study_id)
    assert entry["detail"] == {"destinations": ["stow"], "objects": 1}
    assert sent == [f"{study_id}/result.dcm"]
