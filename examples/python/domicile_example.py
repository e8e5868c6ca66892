#!/usr/bin/env python3
"""A Domicile client in Python: list regions, verify each region's sealing key against the
federation trust bundle, ingest sealed records, check contact permission, run an aggregate
(differentially private: summed from noisy releases of closed months),
(with the DPO's key) make a signed access request and open the sealed export, and (with
`--local`) close the loop on a detractor: open a follow-up by pseudonym through the gateway,
then, as the region's in-country agent over mutual TLS, re-identify the customer and record the
outcome, which the gateway then reports — against `domicile dev` (or any gateway).

    python3 -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt
    .venv/bin/python examples/python/domicile_example.py --gateway 127.0.0.1:50051 \
        --token "$TOKEN" --trust-bundle DATA/trust-bundle.json --dpo-key DATA/dpo/dpo.key

The gateway is not trusted: the sealing key it relays is used only once the region's signed
statement verifies with the region's identity key from the trust bundle (a file distributed out
of band), and requests for a person's whole record carry the DPO's Ed25519 signature, which the
region's node checks (the layouts are in `gateway.proto` and `common.proto`).

The gRPC stubs are generated at start from `proto/` with grpcio-tools. Sealing follows the
format documented in `proto/domicile/v1/records.proto`, implemented here with pyhpke (the HPKE
context and its exporter) and the `cryptography` package (ChaCha20-Poly1305 per record): this
script is the proof that the format is reproducible outside Rust.
"""

import argparse
import hashlib
import importlib
import json
import os
import struct
import sys
import tempfile
import time

import grpc
import pyhpke
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTOS = ["common", "records", "aggregate", "query", "consent", "audit", "subject", "followup", "overview",
          "gateway", "local"]


def generate_stubs():
    """Compiles the contract into a temporary package and imports it."""
    out = tempfile.mkdtemp(prefix="domicile-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = [f"domicile/v1/{name}.proto" for name in PROTOS]
    code = protoc.main(
        ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + files
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, out)
    pb = {name: importlib.import_module(f"domicile.v1.{name}_pb2") for name in PROTOS}
    grpc_mod = importlib.import_module("domicile.v1.gateway_pb2_grpc")
    pb["local_grpc"] = importlib.import_module("domicile.v1.local_pb2_grpc")
    return pb, grpc_mod


SUITE = pyhpke.CipherSuite.new(
    pyhpke.KEMId.DHKEM_X25519_HKDF_SHA256,
    pyhpke.KDFId.HKDF_SHA256,
    pyhpke.AEADId.CHACHA20_POLY1305,
)


SUITE_NAME = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305"
CLOCK_SKEW_SECONDS = 60


def key_id(public_key):
    """A key's id: hex of the first 8 bytes of its SHA-256."""
    return hashlib.sha256(public_key).digest()[:8].hex()


class UntrustedKey(Exception):
    """The sealing key the gateway relayed for a region does not check out."""


def verified_sealing_key(pb, bundle, region, now):
    """The region's sealing key, once its signed statement verifies with the region's identity
    key from the trust bundle (gateway.proto, `SignedSealingKey`); raises UntrustedKey naming
    the region otherwise. Nothing is sealed before this returns."""
    rid = region.region_id
    entry = bundle.get("regions", {}).get(rid)
    if entry is None:
        raise UntrustedKey(f"region {rid}: not in the trust bundle")
    if entry.get("expires_at") is not None and now >= entry["expires_at"]:
        raise UntrustedKey(f"region {rid}: its trust bundle entry has expired")
    if not region.HasField("signed_sealing_key"):
        raise UntrustedKey(f"region {rid}: the gateway relayed no signed sealing key")
    signed = region.signed_sealing_key
    identity = Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry["identity_public_key"]))
    try:
        identity.verify(signed.signature, b"domicile/v1/sealing-key\x00" + signed.statement)
    except InvalidSignature:
        raise UntrustedKey(f"region {rid}: the sealing-key statement's signature does not verify") from None
    statement = pb["gateway"].SealingKeyStatement.FromString(signed.statement)
    if statement.region_id != rid:
        raise UntrustedKey(f"region {rid}: the statement is for another region")
    if statement.suite != SUITE_NAME or statement.key_id != key_id(statement.public_key):
        raise UntrustedKey(f"region {rid}: the statement's suite or key id does not check out")
    if not (statement.not_before - CLOCK_SKEW_SECONDS <= now < statement.not_after):
        raise UntrustedKey(f"region {rid}: the statement is not valid now")
    relayed = region.sealing_key
    if relayed.public_key and (relayed.public_key != statement.public_key or relayed.key_id != statement.key_id):
        raise UntrustedKey(f"region {rid}: the relayed sealing key is not the signed key")
    return statement


def dpo_sign(pb, request, full_name, dpo_key, now):
    """Signs `request` in place as the DPO (common.proto, `DpoSignature`): domain, message
    name, key id, nonce and time, then the request's protobuf encoding without the signature."""
    public = dpo_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    kid, nonce = key_id(public), os.urandom(16)
    request.ClearField("dpo_signature")
    message = (b"domicile/v1/dpo-request\x00" + full_name.encode() + b"\x00" + kid.encode() + b"\x00"
               + struct.pack(">I", len(nonce)) + nonce + struct.pack(">q", now)
               + request.SerializeToString(deterministic=True))
    signature = pb["common"].DpoSignature(key_id=kid, nonce=nonce, signature=dpo_key.sign(message))
    signature.signed_at.seconds = now
    request.dpo_signature.CopyFrom(signature)


class EnvelopeSealer:
    """Seals records for one region, exactly as records.proto specifies, to a key that
    `verified_sealing_key` returned."""

    def __init__(self, pb, tenant, statement):
        self.pb, self.tenant, self.region_id = pb, tenant, statement.region_id
        public_key = SUITE.kem.deserialize_public_key(statement.public_key)
        info = b"domicile/v1/ingest\x00" + tenant.encode() + b"\x00" + self.region_id.encode()
        self.enc, context = SUITE.create_sender_context(public_key, info=info)
        self.key_id = statement.key_id
        self.cipher = ChaCha20Poly1305(context.export(b"domicile/v1/record-key", 32))
        self.records = []

    def seal(self, country, idempotency_key, payload):
        seq = len(self.records)
        kind = "SUBJECT" if payload.HasField("subject") else "INTERACTION"
        kind_enum = self.pb["records"].RECORD_KIND_SUBJECT if kind == "SUBJECT" else self.pb["records"].RECORD_KIND_INTERACTION
        nonce = b"\x00\x00\x00\x00" + struct.pack(">Q", seq)
        aad = f"domicile/v1|{self.tenant}|{self.region_id}|{country}|{kind}|{seq}|{idempotency_key}".encode()
        ciphertext = self.cipher.encrypt(nonce, payload.SerializeToString(), aad)
        self.records.append(
            self.pb["records"].SealedRecord(
                seq=seq, idempotency_key=idempotency_key, country=country, kind=kind_enum,
                ciphertext=ciphertext,
            )
        )

    def finish(self):
        return self.pb["records"].SealedEnvelope(
            region_id=self.region_id, key_id=self.key_id, encapsulated_key=self.enc,
            records=self.records,
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", default="127.0.0.1:50051")
    parser.add_argument("--tenant", default="pyexample")
    parser.add_argument("--token", help="bearer JWT for the tenant (`domicile token`); omit for an --insecure gateway")
    parser.add_argument("--trust-bundle", required=True,
                        help="the federation trust bundle (`trust-bundle.json` in `domicile dev`'s data directory)")
    parser.add_argument("--dpo-key", help="the tenant DPO's Ed25519 key file (64 hex characters): "
                        "makes a signed access request and opens its export")
    parser.add_argument("--local", help="eu-de's in-country listener (host:port, as `domicile dev` prints "
                        "it): plays the in-country agent of a follow-up")
    parser.add_argument("--local-pki", help="the in-country PKI directory (`local-pki` in dev's data "
                        "directory): ca.pem and the agent's certificate and key")
    parser.add_argument("--agent", default="agent.dev.domicile", help="the agent's certificate name")
    args = parser.parse_args()
    with open(args.trust_bundle) as f:
        bundle = json.load(f)
    pb, grpc_mod = generate_stubs()
    records, common, consent, gateway = pb["records"], pb["common"], pb["consent"], pb["gateway"]
    aggregate = pb["aggregate"]
    if args.token:
        # The token rides on every call; local credentials allow that over loopback plaintext,
        # a TLS gateway takes grpc.ssl_channel_credentials() instead.
        credentials = grpc.composite_channel_credentials(
            grpc.local_channel_credentials(), grpc.access_token_call_credentials(args.token))
        channel = grpc.secure_channel(args.gateway, credentials)
    else:
        channel = grpc.insecure_channel(args.gateway)
    stub = grpc_mod.GatewayStub(channel)

    regions = stub.ListRegions(gateway.ListRegionsRequest()).regions
    print("regions:", ", ".join(f"{r.region_id}({'/'.join(r.countries)})" for r in regions))
    de = next(r for r in regions if "DE" in r.countries)
    now = int(time.time())
    try:
        statement = verified_sealing_key(pb, bundle, de, now)
    except UntrustedKey as e:
        sys.exit(f"refusing to seal: {e}")
    if "DE" not in statement.countries:
        sys.exit(f"refusing to seal: region {de.region_id}: its signed statement does not list DE")
    print(f"sealing key: region {statement.region_id} key {statement.key_id} verified with the trust bundle")

    # Twelve German customers, two calls each, sealed in one envelope.
    sealer = EnvelopeSealer(pb, args.tenant, statement)
    for i in range(12):
        sealer.seal("DE", f"py-s-{i}", records.RecordPayload(subject=records.SubjectRecord(
            external_id=f"py-{i}", full_name="Erika Mustermann", email=f"erika{i}@example.de",
            language="de-DE", birth_year=1980 + i)))
        for j in range(2):
            interaction = records.InteractionRecord(
                interaction_id=f"py-{i}-{j}", subject_external_id=f"py-{i}",
                channel=common.CHANNEL_PHONE, handle_time_seconds=240,
                # py-11 is a detractor: the follow-up below is for them.
                survey=records.SurveyAnswer(survey_id="post-call", nps=2 if i == 11 else 9 - (i % 3)),
            )
            interaction.started_at.seconds = now - 86_400 * (j + 1)
            sealer.seal("DE", f"py-i-{i}-{j}", records.RecordPayload(interaction=interaction))
    response = stub.Ingest(gateway.IngestRequest(tenant_id=args.tenant, envelopes=[sealer.finish()]))
    statuses = [r.status for r in response.results]
    accepted = sum(1 for s in statuses if s in (records.RECORD_STATUS_ACCEPTED, records.RECORD_STATUS_DUPLICATE))
    print(f"ingest: {accepted} of {len(statuses)} records accepted")
    if accepted != len(statuses):
        sys.exit(f"rejected: {[ (r.seq, r.reason, r.detail) for r in response.results if r.status == records.RECORD_STATUS_REJECTED ]}")

    # May we call customer py-0 for a survey? DE needs an opt-in: first no, then yes.
    subject = consent.SubjectRef(country="DE", external_id="py-0")
    check = lambda: stub.CheckContactPermission(consent.CheckContactPermissionRequest(
        tenant_id=args.tenant, subject=subject, purpose=common.PURPOSE_CX_SURVEY,
        channel=common.CHANNEL_PHONE))
    before = check()
    stub.RecordConsent(consent.RecordConsentRequest(
        tenant_id=args.tenant, subject=subject, purpose=common.PURPOSE_CX_SURVEY,
        channel=common.CHANNEL_PHONE, action=consent.CONSENT_ACTION_GRANT,
        source=consent.CONSENT_SOURCE_WEB_FORM, wording_sha256=bytes(32), actor="python-example"))
    after = check()
    print(f"contact permission: before={before.allowed} after={after.allowed} policy={after.policy_version}")

    result = stub.Aggregate(gateway.AggregateRequest(
        tenant_id=args.tenant,
        query=aggregate.AggregateQuery(
            purpose=common.PURPOSE_CX_ANALYTICS,
            metrics=[aggregate.METRIC_COUNT, aggregate.METRIC_DISTINCT_SUBJECTS, aggregate.METRIC_NPS],
            group_by=[aggregate.DIMENSION_COUNTRY],
        ),
    ))
    # Across the border every figure is summed from noisy releases of closed days and months
    # (docs/privacy-model.md): the calls above are from today, so they are not in it yet.
    for group in result.groups:
        values = {aggregate.Metric.Name(v.metric): round(v.value, 1) for v in group.values}
        print(f"aggregate: country={group.key.country} {values}")
    releases = sum(len(r.derived_from) for r in result.attestation.regions)
    through = max((r.released_through.seconds for r in result.attestation.regions), default=0)
    print(f"aggregate: {len(result.groups)} groups from {releases} noisy releases, "
          f"mechanism {common.NoiseMechanism.Name(result.privacy.mechanism)}, data up to "
          f"{time.strftime('%Y-%m-%d', time.gmtime(through))}")

    if args.dpo_key:
        # Access for py-0: signed by the DPO (the recipient key is inside what is signed), the
        # export sealed to a key only this script holds. The platform verified the requester
        # (signed in to their account), so the request is fulfilled at once; without
        # `verification` it would wait for UpdateSubjectRequest with `verify`.
        subject_pb = pb["subject"]
        with open(args.dpo_key) as f:
            dpo_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(f.read().strip()))
        recipient = SUITE.kem.derive_key_pair(os.urandom(32))
        request = subject_pb.SubmitSubjectRequestRequest(
            tenant_id=args.tenant, subject=subject, kind=subject_pb.SUBJECT_REQUEST_KIND_ACCESS,
            recipient_public_key=recipient.public_key.to_public_bytes(), actor="python-example",
            verification=subject_pb.IdentityVerification(
                method=subject_pb.VERIFICATION_METHOD_ACCOUNT_LOGIN,
                evidence_reference="portal session 1", verified_by="python-example"))
        dpo_sign(pb, request, "domicile.v1.SubmitSubjectRequestRequest", dpo_key, int(time.time()))
        receipt = stub.SubmitSubjectRequest(request).receipts[0]
        info = b"domicile/v1/export\x00" + args.tenant.encode() + b"\x00" + receipt.region_id.encode()
        context = SUITE.create_recipient_context(receipt.export.encapsulated_key, recipient.private_key, info=info)
        export = json.loads(context.open(receipt.export.ciphertext, aad=receipt.request_id.encode()))
        print(f"access: export for {export['subject']['external_id']} opened, "
              f"{len(export['interactions'])} interactions")
        # The same signed request again: the node refuses the replayed nonce.
        try:
            stub.SubmitSubjectRequest(request)
            sys.exit("a replayed DPO request was accepted")
        except grpc.RpcError as e:
            print(f"replay: {e.code().name} {e.details()}")

    if args.local:
        close_the_loop(pb, stub, args)


def close_the_loop(pb, stub, args):
    """The analyst opens a follow-up for a detractor by pseudonym; the in-country agent, over
    the region's own mutual TLS, re-identifies the customer and records the outcome; the
    analyst sees the status, never who it was."""
    common, query, followup, local = pb["common"], pb["query"], pb["followup"], pb["local"]
    gateway = pb["gateway"]
    since = common.TimeRange()
    since.start.seconds = int(time.time()) - 3 * 86_400
    stream = stub.QueryRecords(gateway.QueryRecordsRequest(
        tenant_id=args.tenant,
        query=query.RecordQuery(purpose=common.PURPOSE_SERVICE, time_range=since)))
    detractor = next(r for msg in stream for r in msg.records
                     if r.region_id == "eu-de" and r.HasField("nps") and r.nps <= 6)
    opened = stub.OpenFollowUp(followup.OpenFollowUpRequest(
        tenant_id=args.tenant, region_id=detractor.region_id,
        subject_pseudonym=detractor.subject_pseudonym, purpose=common.PURPOSE_SERVICE,
        channels=[common.CHANNEL_PHONE, common.CHANNEL_EMAIL], reason="nps-detractor",
        priority=followup.FOLLOW_UP_PRIORITY_HIGH))
    case = opened.follow_up
    print(f"follow-up: opened {case.follow_up_id} for pseudonym {detractor.subject_pseudonym[:12]}")

    def read(name):
        with open(os.path.join(args.local_pki, name), "rb") as f:
            return f.read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("ca.pem"), private_key=read(f"{args.agent}.key"),
        certificate_chain=read(f"{args.agent}.pem"))
    agent = pb["local_grpc"].LocalNodeStub(grpc.secure_channel(args.local, credentials))
    queue = agent.ListFollowUps(followup.LocalNodeListFollowUpsRequest(tenant_id=args.tenant, open_only=True))
    assert any(f.follow_up_id == case.follow_up_id for f in queue.follow_ups), "the case is in the agent's queue"
    who = agent.ReidentifyFollowUp(followup.ReidentifyFollowUpRequest(
        tenant_id=args.tenant, follow_up_id=case.follow_up_id))
    print(f"in-country: agent re-identified {who.contact.external_id} "
          f"on {common.Channel.Name(who.contact.channel)}")
    agent.RecordFollowUpOutcome(followup.RecordFollowUpOutcomeRequest(
        tenant_id=args.tenant, follow_up_id=case.follow_up_id,
        outcome=followup.FOLLOW_UP_STATUS_RESOLVED))
    seen = stub.ListFollowUps(followup.ListFollowUpsRequest(
        tenant_id=args.tenant, follow_up_ids=[case.follow_up_id])).follow_ups[0]
    print(f"follow-up: the gateway reports {followup.FollowUpStatus.Name(seen.status)}")


if __name__ == "__main__":
    main()
