#!/usr/bin/env python3
"""A Domicile client in Python: list regions, ingest sealed records, check contact permission,
run an aggregate — against `domicile dev` (or any gateway).

    python3 -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt
    .venv/bin/python examples/python/domicile_example.py --gateway 127.0.0.1:50051

The gRPC stubs are generated at start from `proto/` with grpcio-tools. Sealing follows the
format documented in `proto/domicile/v1/records.proto`, implemented here with pyhpke (the HPKE
context and its exporter) and the `cryptography` package (ChaCha20-Poly1305 per record): this
script is the proof that the format is reproducible outside Rust.
"""

import argparse
import importlib
import os
import struct
import sys
import tempfile
import time

import grpc
import pyhpke
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTOS = ["common", "records", "aggregate", "query", "consent", "audit", "subject", "overview", "gateway"]


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
    return pb, grpc_mod


SUITE = pyhpke.CipherSuite.new(
    pyhpke.KEMId.DHKEM_X25519_HKDF_SHA256,
    pyhpke.KDFId.HKDF_SHA256,
    pyhpke.AEADId.CHACHA20_POLY1305,
)


class EnvelopeSealer:
    """Seals records for one region, exactly as records.proto specifies."""

    def __init__(self, pb, tenant, region):
        self.pb, self.tenant, self.region_id = pb, tenant, region.region_id
        public_key = SUITE.kem.deserialize_public_key(region.sealing_key.public_key)
        info = b"domicile/v1/ingest\x00" + tenant.encode() + b"\x00" + self.region_id.encode()
        self.enc, context = SUITE.create_sender_context(public_key, info=info)
        self.key_id = region.sealing_key.key_id
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
    args = parser.parse_args()
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

    # Twelve German customers, two calls each, sealed in one envelope.
    sealer = EnvelopeSealer(pb, args.tenant, de)
    now = int(time.time())
    for i in range(12):
        sealer.seal("DE", f"py-s-{i}", records.RecordPayload(subject=records.SubjectRecord(
            external_id=f"py-{i}", full_name="Erika Mustermann", email=f"erika{i}@example.de",
            language="de-DE", birth_year=1980 + i)))
        for j in range(2):
            interaction = records.InteractionRecord(
                interaction_id=f"py-{i}-{j}", subject_external_id=f"py-{i}",
                channel=common.CHANNEL_PHONE, handle_time_seconds=240,
                survey=records.SurveyAnswer(survey_id="post-call", nps=9 - (i % 3)),
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
    for group in result.groups:
        values = {aggregate.Metric.Name(v.metric): round(v.value, 1) for v in group.values}
        print(f"aggregate: country={group.key.country} {values}")


if __name__ == "__main__":
    main()
