#!/usr/bin/env python3
"""A keyless signature of an image digest, made the way Fulcio and Rekor
would make one, with stand-ins generated here (openssl, no network):

- a certificate authority standing in for Fulcio (ECDSA P-256), which
  certifies a fresh signing key for an identity (the certificate's Subject
  Alternative Name, a URI or an e-mail) and an OIDC issuer (the Fulcio
  extension 1.3.6.1.4.1.57264.1.8);
- a transparency log key standing in for Rekor, which signs the entry's
  signed entry timestamp (SET) over a `dsse` entry of the signature;
- a sigstore bundle (v0.3) with the certificate, the log entry and a DSSE
  envelope over an in-toto statement whose subject is the digest;
- sigstore's trusted_root.json naming the authority and the log.

Usage: keyless.py OUT_DIR DIGEST IDENTITY ISSUER [--no-tlog] [--ca CA_DIR]
Writes OUT_DIR/bundle.json, OUT_DIR/trusted_root.json and OUT_DIR/meta.json
(the entry's integrated time). With --ca, the authority and log keys are
kept in CA_DIR and reused by later runs (one trusted root, many bundles).
"""

import base64
import hashlib
import json
import os
import subprocess
import sys
import time


def run(*args, data=None):
    return subprocess.run(args, input=data, check=True, capture_output=True).stdout


def b64(data):
    return base64.b64encode(data).decode()


def der_of(pem_path, kind):
    return run("openssl", kind, "-in", pem_path, "-outform", "DER")


def sign(key, message):
    """ECDSA P-256 over SHA-256, DER, as cosign and Rekor sign."""
    return run("openssl", "dgst", "-sha256", "-sign", key, data=message)


def pae(payload_type, payload):
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def main():
    out, digest, identity, issuer = sys.argv[1:5]
    rest = sys.argv[5:]
    tlog = "--no-tlog" not in rest
    ca_dir = rest[rest.index("--ca") + 1] if "--ca" in rest else out
    os.makedirs(out, exist_ok=True)
    os.makedirs(ca_dir, exist_ok=True)
    p = lambda name: os.path.join(out, name)
    c = lambda name: os.path.join(ca_dir, name)
    for key in (c("ca.key"), p("leaf.key"), c("log.key")):
        if not os.path.exists(key):
            run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    if not os.path.exists(c("ca.pem")):
        run("openssl", "req", "-x509", "-new", "-key", c("ca.key"), "-sha256", "-days", "3650",
            "-subj", "/O=freshen e2e/CN=fulcio stand-in", "-out", c("ca.pem"),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")
    san = ("email:" if "@" in identity and "://" not in identity else "URI:") + identity
    issuer_der = b"\x0c" + bytes([len(issuer)]) + issuer.encode()
    with open(p("leaf.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n")
        f.write("keyUsage=critical,digitalSignature\n")
        f.write("extendedKeyUsage=codeSigning\n")
        f.write(f"subjectAltName=critical,{san}\n")
        f.write(f"1.3.6.1.4.1.57264.1.8=DER:{issuer_der.hex()}\n")
    run("openssl", "req", "-new", "-key", p("leaf.key"), "-subj", "/O=sigstore.dev", "-out", p("leaf.csr"))
    run("openssl", "x509", "-req", "-in", p("leaf.csr"), "-CA", c("ca.pem"), "-CAkey", c("ca.key"),
        "-set_serial", str(int(time.time())), "-days", "1", "-sha256", "-extfile", p("leaf.ext"),
        "-out", p("leaf.pem"))
    ca_der = der_of(c("ca.pem"), "x509")
    leaf_der = der_of(p("leaf.pem"), "x509")
    log_spki = run("openssl", "ec", "-in", c("log.key"), "-pubout", "-outform", "DER")
    log_id = hashlib.sha256(log_spki).digest()

    statement = json.dumps({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "image", "digest": {"sha256": digest.split(":", 1)[1]}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }, separators=(",", ":")).encode()
    payload_type = "application/vnd.in-toto+json"
    signature = b64(sign(p("leaf.key"), pae(payload_type, statement)))
    envelope = {"payload": b64(statement), "payloadType": payload_type,
                "signatures": [{"sig": signature}]}
    material = {"certificate": {"rawBytes": b64(leaf_der)}, "tlogEntries": []}
    integrated = int(time.time())
    if tlog:
        leaf_pem = open(p("leaf.pem"), "rb").read()
        body = json.dumps({
            "apiVersion": "0.0.1", "kind": "dsse",
            "spec": {
                "envelopeHash": {"algorithm": "sha256",
                                 "value": hashlib.sha256(json.dumps(envelope).encode()).hexdigest()},
                "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(statement).hexdigest()},
                "signatures": [{"signature": signature, "verifier": b64(leaf_pem)}],
            },
        }, separators=(",", ":")).encode()
        index = 4242
        promise = json.dumps({"body": b64(body), "integratedTime": integrated,
                              "logID": log_id.hex(), "logIndex": index},
                             separators=(",", ":"), sort_keys=True).encode()
        material["tlogEntries"].append({
            "logIndex": str(index),
            "logId": {"keyId": b64(log_id)},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": str(integrated),
            "inclusionPromise": {"signedEntryTimestamp": b64(sign(c("log.key"), promise))},
            "canonicalizedBody": b64(body),
        })
    bundle = {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
              "verificationMaterial": material, "dsseEnvelope": envelope}
    root = {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [{"baseUrl": "https://rekor.invalid", "hashAlgorithm": "SHA2_256",
                   "publicKey": {"rawBytes": b64(log_spki), "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                                 "validFor": {"start": "2020-01-01T00:00:00Z"}},
                   "logId": {"keyId": b64(log_id)}}],
        "certificateAuthorities": [{"subject": {"organization": "freshen e2e", "commonName": "fulcio stand-in"},
                                    "uri": "https://fulcio.invalid",
                                    "certChain": {"certificates": [{"rawBytes": b64(ca_der)}]},
                                    "validFor": {"start": "2020-01-01T00:00:00Z"}}],
        "ctlogs": [], "timestampAuthorities": [],
    }
    json.dump(bundle, open(p("bundle.json"), "w"))
    json.dump(root, open(p("trusted_root.json"), "w"), indent=1)
    json.dump({"integratedTime": integrated}, open(p("meta.json"), "w"))
    for f in ("leaf.key", "leaf.csr", "leaf.ext", "leaf.pem"):
        os.remove(p(f))
    if ca_dir == out:
        for f in ("ca.key", "log.key", "ca.pem"):
            os.remove(p(f))


if __name__ == "__main__":
    main()
