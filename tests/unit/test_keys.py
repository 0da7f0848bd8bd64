"""Keys per purpose (issue 13.4): HKDF per RFC 5869, each consumer with its own derived key,
and data written before keys per purpose (master-keyed) still read and still joined."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from radpipe.common.context import Context, build_context
from radpipe.common.docstore import make_document_store
from radpipe.common.errors import BadRequest
from radpipe.common.identity import (
    PatientKeys,
    instance_key_for,
    keyed_digest,
    pseudonymous_uid,
    study_id_for,
)
from radpipe.common.keys import Purpose, hkdf_sha256, purpose_key
from radpipe.common.ports import DocumentStore
from radpipe.common.settings import Settings
from radpipe.common.studies import MIGRATIONS, now
from radpipe.common.vault import COLLECTION, KEY_ID, REWRAPPED, Vault, legacy_key
from radpipe.deid.service import deidentify_study
from radpipe.deid.stability import check_stable
from radpipe.ingest.multipart import Part
from radpipe.ingest.service import store_parts
from radpipe.notify import links
from radpipe.notify.signing import make_ack_token, read_ack_token
from radpipe.portal.service import lookup_source_study

from ..conftest import RecordingDispatcher
from ..dicom import PHI, ct_series, read

# RFC 5869 Appendix A.1 (Test Case 1, SHA-256).
RFC_IKM = bytes.fromhex("0b" * 22)
RFC_SALT = bytes.fromhex("000102030405060708090a0b0c")
RFC_INFO = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
RFC_OKM = bytes.fromhex(
    "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
)


def test_hkdf_matches_rfc_5869_test_case_1() -> None:
    assert hkdf_sha256(RFC_IKM, RFC_INFO, 42, RFC_SALT) == RFC_OKM


def test_each_purpose_has_its_own_key_and_none_is_the_master(ctx: Context) -> None:
    master = ctx.settings.master_secret
    keys = {purpose: ctx.settings.key(purpose) for purpose in Purpose}
    assert len(set(keys.values())) == len(Purpose)
    assert all(len(key) == 32 and key != master for key in keys.values())
    assert keys[Purpose.VAULT] == purpose_key(master, Purpose.VAULT)
    # Another master gives other keys for every purpose.
    other = os.urandom(32)
    assert all(purpose_key(other, p) != keys[p] for p in Purpose)


def ingest(ctx: Context, series: list[bytes]) -> str:
    result = store_parts(ctx, [Part.from_bytes("application/dicom", b) for b in series], None)
    assert not result.failed
    return result.stored[0].study_id


def deidentified(ctx: Context, study_id: str) -> None:
    last = ctx.studies.get(study_id)["last_instance_at"]
    check_stable(ctx, study_id, clock=lambda: last + timedelta(seconds=5))
    deidentify_study(ctx, study_id)
    assert ctx.studies.get(study_id)["state"] == "deidentified"


def test_ingest_and_deid_use_the_pseudonym_date_and_vault_keys(ctx: Context) -> None:
    series = ct_series()[:2]
    first = read(series[0])
    uid, master = str(first.StudyInstanceUID), ctx.settings.master_secret
    pseudonyms, dates = ctx.settings.key(Purpose.PSEUDONYMS), ctx.settings.key(Purpose.DATES)
    study_id = ingest(ctx, series)
    assert study_id == study_id_for(pseudonyms, uid) != study_id_for(master, uid)
    assert ctx.studies.instances.find_one(
        {"_id": instance_key_for(pseudonyms, first.SOPInstanceUID)}
    )
    deidentified(ctx, study_id)
    # UIDs and the patient pseudonym: the pseudonym key, not an HMAC with the master.
    entry = ctx.documents.collection("dicom_index").find_one({"study_id": study_id})
    attributes = entry["attributes"]
    assert attributes["StudyInstanceUID"] == pseudonymous_uid(pseudonyms, uid)
    assert attributes["StudyInstanceUID"] != pseudonymous_uid(master, uid)
    keys = PatientKeys.derive(pseudonyms, PHI["patient_id"], dates=dates)
    assert (
        attributes["PatientID"]
        == keys.patient_id
        != PatientKeys.derive(master, PHI["patient_id"]).patient_id
    )
    # The date offset: the dates key (the pseudonym key alone would give another draw).
    identity = ctx.vault.get(study_id)
    assert identity["date_offset_days"] == keys.date_offset.days != 0
    assert keys.date_offset != PatientKeys.derive(pseudonyms, PHI["patient_id"]).date_offset
    # The vault entry: AES-GCM under the vault key, marked with it.
    stored = ctx.documents.collection(COLLECTION).find_one({"_id": study_id})
    assert stored["key"] == KEY_ID
    plain = AESGCM(ctx.settings.key(Purpose.VAULT)).decrypt(
        bytes.fromhex(stored["nonce"]), bytes.fromhex(stored["blob"]), study_id.encode()
    )
    assert json.loads(plain)["patient_id"] == PHI["patient_id"]


def legacy_study(ctx: Context, series: list[bytes], monkeypatch: pytest.MonkeyPatch) -> str:
    """A study stored as 0.1 stored it: ids and keys derived with the master secret."""
    with monkeypatch.context() as patch:
        patch.setattr(Context, "study_key", lambda self, uid: self.settings.master_secret)
        return ingest(ctx, series)


def test_a_study_stored_before_keys_per_purpose_keeps_its_id_and_uids(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    series = ct_series(seed=11)
    uid, master = str(read(series[0]).StudyInstanceUID), ctx.settings.master_secret
    study_id = legacy_study(ctx, series[:2], monkeypatch)
    assert study_id == study_id_for(master, uid)
    # After the upgrade: a new instance joins the stored study, a re-sent one is the same one.
    assert ingest(ctx, series[2:3]) == study_id
    assert ingest(ctx, series[:1]) == study_id
    assert [s["_id"] for s in ctx.studies.studies.find({})] == [study_id]
    assert ctx.studies.get(study_id)["instance_count"] == 3
    assert len(list(ctx.objects.list(ctx.buckets["raw"]))) == 3
    assert ctx.study_key(uid) == master
    # The study's de-identified UIDs stay what they were (keyed with the master).
    deidentified(ctx, study_id)
    entry = ctx.documents.collection("dicom_index").find_one({"study_id": study_id})
    assert entry["attributes"]["StudyInstanceUID"] == pseudonymous_uid(master, uid)
    # A new study next to it gets the new keys.
    other = ct_series(seed=12)
    new_uid = str(read(other[0]).StudyInstanceUID)
    pseudonyms = ctx.settings.key(Purpose.PSEUDONYMS)
    assert ingest(ctx, other[:1]) == study_id_for(pseudonyms, new_uid)
    assert ctx.study_key(new_uid) == pseudonyms


def test_lookup_by_original_uid_finds_old_and_new_studies(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radpipe.common.auth import Principal

    old, new = ct_series(seed=13)[:1], ct_series(seed=14)[:1]
    old_id, new_id = legacy_study(ctx, old, monkeypatch), ingest(ctx, new)
    radiologist = Principal("r", "radiologist", "token")
    for series, study_id in ((old, old_id), (new, new_id)):
        found = lookup_source_study(ctx, radiologist, str(read(series[0]).StudyInstanceUID))
        assert [view.id for view in found] == [study_id]


def put_legacy(documents: DocumentStore, master: bytes, entry_id: str) -> None:
    """A vault entry as 0.1 wrote it: HKDF(master, info "radpipe-vault"), no ``key`` field."""
    nonce = os.urandom(12)
    blob = AESGCM(legacy_key(master)).encrypt(
        nonce, json.dumps({"patient_id": entry_id}).encode(), entry_id.encode()
    )
    documents.collection(COLLECTION).insert_one(
        {"_id": entry_id, "nonce": nonce.hex(), "blob": blob.hex()}
    )


def test_a_vault_entry_under_the_old_key_is_read_and_rewrapped(ctx: Context) -> None:
    put_legacy(ctx.documents, ctx.settings.master_secret, "old-1")
    assert ctx.vault.get("old-1") == {"patient_id": "old-1"}
    rewrapped = ctx.documents.collection(COLLECTION).find_one({"_id": "old-1"})
    assert rewrapped["key"] == KEY_ID
    vault_key_only = Vault(ctx.documents, ctx.settings.key(Purpose.VAULT))
    assert vault_key_only.get("old-1") == {"patient_id": "old-1"}
    # Without the master an old entry does not open; with another master it does not either.
    put_legacy(ctx.documents, ctx.settings.master_secret, "old-2")
    with pytest.raises(ValueError, match="legacy"):
        vault_key_only.get("old-2")
    stranger = Vault(ctx.documents, os.urandom(32), os.urandom(32))
    with pytest.raises(ValueError, match="another master secret"):
        stranger.get("old-2")
    with pytest.raises(ValueError, match="another master secret"):
        stranger.get("old-1")


def test_the_vault_is_rewrapped_once_when_a_process_with_the_key_starts(
    settings: Settings,
) -> None:
    documents = make_document_store(settings)
    for entry_id in ("old-1", "old-2", "old-3"):
        put_legacy(documents, settings.master_secret, entry_id)
    documents.close()
    context = build_context(settings, tasks=RecordingDispatcher())
    try:
        entries = list(context.documents.collection(COLLECTION).find({}))
        assert [e.get("key") for e in entries] == [KEY_ID] * 3
        assert context.documents.collection(MIGRATIONS).find_one({"_id": REWRAPPED})
        assert context.vault.rewrap_legacy() == 0  # once
        assert context.vault.get("old-2") == {"patient_id": "old-2"}
    finally:
        context.documents.close()


def test_a_keyless_process_does_not_touch_the_vault(settings: Settings) -> None:
    documents = make_document_store(settings)
    put_legacy(documents, settings.master_secret, "old-1")
    documents.close()
    keyless = Settings(
        data_dir=settings.data_dir, bucket_prefix=settings.bucket_prefix, keyless=True
    )
    context = build_context(keyless, tasks=RecordingDispatcher())
    try:
        assert (
            context.documents.collection(COLLECTION).find_one({"_id": "old-1"}).get("key") is None
        )
        with pytest.raises(RuntimeError, match="RADPIPE_KEYLESS"):
            context.vault  # noqa: B018
    finally:
        context.documents.close()


def test_ack_links_are_signed_with_the_links_key(ctx: Context) -> None:
    from radpipe.notify.paging import message_for

    alert = {
        "_id": "s1-v1",
        "study_id": "s1",
        "urgency": 2,
        "deadline_at": now(),
        "created_at": now(),
    }
    message = message_for(ctx, alert, 1, "alert", "dr-a")
    token = message.links["Acknowledge"].rsplit("/", 1)[1]
    assert read_ack_token(ctx.settings.key(Purpose.LINKS), token).alert_id == "s1-v1"
    with pytest.raises(BadRequest, match="not valid"):
        read_ack_token(ctx.settings.master_secret, token)
    # A link sent before keys per purpose (master-signed) works until it expires.
    old = make_ack_token(ctx.settings.master_secret, "s1-v1", "dr-a", now().timestamp() + 60)
    assert links.read_link(ctx.settings, old).recipient == "dr-a"
    expired = make_ack_token(ctx.settings.master_secret, "s1-v1", "dr-a", now().timestamp() - 1)
    with pytest.raises(BadRequest, match="expired"):
        links.read_link(ctx.settings, expired)
    forged = make_ack_token(os.urandom(32), "s1-v1", "dr-a", now().timestamp() + 60)
    with pytest.raises(BadRequest, match="not valid"):
        links.read_link(ctx.settings, forged)


def test_keyed_digest_with_the_master_is_not_any_purpose_output(ctx: Context) -> None:
    # What 0.1 wrote (HMAC with the master) differs from every derived-key output.
    master = ctx.settings.master_secret
    value = "1.2.3.4"
    derived = {keyed_digest(ctx.settings.key(p), "uid", value) for p in Purpose}
    assert keyed_digest(master, "uid", value) not in derived


def test_the_inference_worker_is_deployed_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose and Kubernetes give the inference worker RADPIPE_KEYLESS and blank its master
    secret and alert credentials (``radpipe up``: tests/unit/test_settings.py)."""
    import yaml

    repo = Path(__file__).resolve().parents[2]
    blanked = ("RADPIPE_SECRET_KEY", "RADPIPE_WEBHOOK_SECRET", "RADPIPE_SMTP_PASSWORD")
    compose = yaml.safe_load((repo / "docker-compose.yml").read_text())["services"]
    for name in ("worker-inference", "worker-inference-gpu"):
        env = compose[name]["environment"]
        assert env["RADPIPE_KEYLESS"] == "true", name
        assert all(env[key] == "" for key in blanked), name
    assert compose["worker-deid"]["environment"]["RADPIPE_SECRET_KEY"].startswith("${")
    deployment = yaml.safe_load((repo / "k8s/base/worker-inference.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RADPIPE_KEYLESS"] == "true"
    assert all(env[key] == "" for key in blanked)
    # A blank value is an unset one for the settings: the keyless worker starts.
    for key, value in {**env, "RADPIPE_MONGO_URL": "mongodb://mongo/radpipe"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RuntimeError, match="RADPIPE_KEYLESS"):
        Settings().key(Purpose.PSEUDONYMS)
