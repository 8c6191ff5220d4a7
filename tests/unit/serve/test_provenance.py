"""C2PA provenance with c2pa-python: a test CA + signing certificate made with `cryptography`,
signed PNGs that verify (and verify as trusted against the CA), tampering detected, the
manifest's content, and where the signing chain comes from (configuration or a dev chain)."""
from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from model_code.serve import provenance as P
from model_code.serve.config import serve_config


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return P.make_dev_chain(str(tmp_path_factory.mktemp("c2pa")))


@pytest.fixture(scope="module")
def signer(chain):
    return P.ManifestSigner(chain["cert_chain"], chain["key"])


def png_of(seed: int = 0, side: int = 32) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


INFO = P.ProvenanceInfo(model="easel-dalle", model_version="7", recipe="dalle", dataset_version="dvc-abc123",
                        prompt="a red circle", revised_prompt="One shape on a white background: a small red circle.",
                        seed=3, clip_score=0.25)


def test_dev_chain_files(chain):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID
    certs = x509.load_pem_x509_certificates(open(chain["cert_chain"], "rb").read())
    leaf, ca = certs
    assert leaf.issuer == ca.subject and leaf.subject != ca.subject            # not self-signed
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert os.stat(chain["key"]).st_mode & 0o077 == 0                          # private key is private


def test_signed_png_verifies_and_states_what_made_it(signer, chain):
    png = png_of(1)
    signed = signer.sign(png, INFO)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(signed))), np.asarray(Image.open(io.BytesIO(png))))
    v = P.verify(signed)
    assert v["valid"] and v["state"] == "Valid" and not v["trusted"]
    assert "signingCredential.untrusted" in v["errors"]                        # a dev CA nobody trusts...
    t = P.verify(signed, trust_anchors_pem=open(chain["ca"]).read())
    assert t["valid"] and t["trusted"] and t["state"] == "Trusted" and t["errors"] == []   # ...unless told to
    m = v["manifest"]
    action = next(a for a in m["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"][0]
    assert action["action"] == "c2pa.created"
    assert action["digitalSourceType"] == P.TRAINED_ALGORITHMIC_MEDIA
    assert action["softwareAgent"] == {"name": "easel-dalle", "version": "7"}
    gen = P.generation_assertion(m)
    assert gen == {"model": "easel-dalle", "model_version": "7", "recipe": "dalle", "dataset_version": "dvc-abc123",
                   "seed": 3, "clip_score": 0.25, "prompt_sha256": P.sha256_hex("a red circle"),
                   "revised_prompt_sha256": P.sha256_hex(INFO.revised_prompt)}
    assert "a red circle" not in json.dumps(m)                                  # hashed, not published
    assert m["signature_info"]["common_name"] == "Easel development signer"


def test_changing_one_pixel_byte_invalidates(signer):
    signed = signer.sign(png_of(2), INFO)
    i = signed.index(b"IDAT") + 4 + 12                                          # inside the pixel stream
    for flip in (0x01, 0x80):
        tampered = bytearray(signed)
        tampered[i] ^= flip
        v = P.verify(bytes(tampered))
        assert not v["valid"] and v["state"] == "Invalid", v["errors"]
    assert P.verify(signed)["valid"]


def test_unsigned_and_garbage_inputs_are_not_valid():
    assert P.verify(png_of(3)) == {"valid": False, "trusted": False, "state": "NoManifest", "manifest": None,
                                   "errors": P.verify(png_of(3))["errors"]}
    assert not P.verify(b"not a png at all")["valid"]
    assert not P.verify(b"")["valid"]


def test_a_self_signed_leaf_is_refused_at_start_up(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    with pytest.raises(ValueError, match="provenance"):
        P.ManifestSigner(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    with pytest.raises(ValueError, match="no such file"):
        P.ManifestSigner(str(tmp_path / "missing.pem"), str(tmp_path / "k.pem"))


def test_signer_from_config_env_certificates_or_a_dev_chain(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    for var in ("EASEL_C2PA_CERT_CHAIN", "EASEL_C2PA_KEY", "EASEL_SERVE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    with caplog.at_level(logging.WARNING, logger="model_code.serve.provenance"):
        s = P.signer_from_config(serve_config("tiny"))
    assert s.cert_chain_path == str(tmp_path / "home" / "c2pa-dev" / "chain.pem")
    assert "development chain" in caplog.text
    first = os.stat(s.cert_chain_path).st_mtime_ns
    assert P.signer_from_config(serve_config("tiny")).cert_chain_path == s.cert_chain_path
    assert os.stat(s.cert_chain_path).st_mtime_ns == first                   # reused, not remade
    # a configured chain (a mounted Secret in a cluster) comes from the environment
    real = P.make_dev_chain(str(tmp_path / "secret"), common_name="Easel production signer")
    monkeypatch.setenv("EASEL_C2PA_CERT_CHAIN", real["cert_chain"])
    monkeypatch.setenv("EASEL_C2PA_KEY", real["key"])
    s2 = P.signer_from_config(serve_config("tiny"))
    assert s2.cert_chain_path == real["cert_chain"]
    signed = s2.sign(png_of(4), INFO)
    assert P.verify(signed)["manifest"]["signature_info"]["common_name"] == "Easel production signer"
    assert P.signer_from_config(serve_config("tiny", {"provenance": {"enabled": False}})) is None
