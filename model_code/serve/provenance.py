"""C2PA provenance: every PNG the server returns carries a signed manifest saying what made it.

DALL-E 3 (section on provenance) attaches C2PA content credentials to generated images. The
manifest here holds:
  - a `c2pa.created` action with digitalSourceType trainedAlgorithmicMedia (IPTC) and the model
    as software agent (registered name + version);
  - an `org.easel.generation` assertion: model, model version, recipe, dataset version (lineage:
    served image -> model version -> runs -> dataset), the SHA-256 of the client's prompt and
    of the revised prompt (the prompt itself is not published in the file), seed and CLIP score.

    signer = ManifestSigner(chain_pem_path, key_pem_path)
    signed_png = signer.sign(png_bytes, ProvenanceInfo(model="easel-dalle", model_version="3", ...))
    verify(signed_png)  ->  {"valid": True, "state": "Valid", "manifest": {...}, "errors": []}

c2pa-python refuses a self-signed leaf: a certificate chain (signing certificate with
digitalSignature + emailProtection, issued by a CA) and its key come from the configuration
(EASEL_C2PA_CERT_CHAIN / EASEL_C2PA_KEY). `make_dev_chain` writes such a chain with
`cryptography` for tests and for `easel serve` without configured certificates.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# IPTC digital source type for "created by a model trained on sampled content"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
GENERATION_ASSERTION = "org.easel.generation"
_VALID_STATES = ("Valid", "Trusted")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class ProvenanceInfo:
    """What one image's manifest states."""
    model: str
    model_version: str
    recipe: str = ""
    dataset_version: str = "unknown"
    prompt: str = ""                 # hashed, never stored
    revised_prompt: str = ""         # hashed, never stored
    seed: int | None = None
    clip_score: float | None = None
    extra: dict = field(default_factory=dict)

    def assertion(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("prompt", "revised_prompt", "extra")}
        d["prompt_sha256"] = sha256_hex(self.prompt)
        if self.revised_prompt and self.revised_prompt != self.prompt:
            d["revised_prompt_sha256"] = sha256_hex(self.revised_prompt)
        d.update(self.extra)
        return {k: v for k, v in d.items() if v is not None}


def manifest_definition(info: ProvenanceInfo) -> dict[str, Any]:
    try:
        from importlib.metadata import version
        easel_version = version("easel")
    except Exception:
        easel_version = "0"
    return {
        "claim_generator_info": [{"name": "easel", "version": easel_version}],
        "title": "image.png",
        "format": "image/png",
        "assertions": [
            {"label": "c2pa.actions",
             "data": {"actions": [{"action": "c2pa.created",
                                   "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                                   "softwareAgent": {"name": info.model, "version": str(info.model_version)}}]}},
            {"label": GENERATION_ASSERTION, "data": info.assertion()},
        ],
    }


class ManifestSigner:
    """Signs PNG bytes with a C2PA manifest (one c2pa Signer, reused; a lock serialises the
    native calls, which take a few milliseconds for small images)."""

    def __init__(self, cert_chain_path: str, key_path: str, alg: str = "es256"):
        import c2pa
        for what, p in (("cert_chain", cert_chain_path), ("key", key_path)):
            if not p or not os.path.isfile(p):
                raise ValueError(f"provenance.{what}: no such file {p!r}")
        with open(cert_chain_path, "rb") as f:
            chain = f.read()
        with open(key_path, "rb") as f:
            key = f.read()
        try:
            alg_enum = c2pa.C2paSigningAlg[alg.upper()]
        except KeyError:
            raise ValueError(f"provenance.alg: unsupported signing algorithm {alg!r}") from None
        try:
            self._signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg_enum, chain, key, None))
        except c2pa.C2paError as e:
            raise ValueError(f"provenance: c2pa refused the certificate chain or key "
                             f"({cert_chain_path}, {key_path}): {e}") from e
        # the thumbnail c2pa embeds by default costs ~200 ms per image and the PNG is its own
        # thumbnail at these sizes: without it signing takes a few ms
        self._context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        self._lock = threading.Lock()
        self.cert_chain_path, self.key_path = cert_chain_path, key_path
        # c2pa checks the chain when it signs: find out now, at start-up, not at the first request
        try:
            self.sign(_probe_png(), ProvenanceInfo(model="probe", model_version="0"))
        except c2pa.C2paError as e:
            raise ValueError(f"provenance: c2pa cannot sign with {cert_chain_path} and {key_path} (a signing "
                             f"certificate with digitalSignature and emailProtection, issued by a CA, is "
                             f"required): {e}") from e

    def sign(self, png: bytes, info: ProvenanceInfo) -> bytes:
        import c2pa
        manifest = json.dumps(manifest_definition(info))
        out = io.BytesIO()
        with self._lock:
            builder = c2pa.Builder(manifest, context=self._context)
            builder.sign(self._signer, "image/png", io.BytesIO(png), out)
        return out.getvalue()


def _probe_png() -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


def verify(png: bytes, trust_anchors_pem: str | bytes | None = None) -> dict[str, Any]:
    """Read and validate a PNG's C2PA manifest.

    Returns {"valid", "trusted", "state", "manifest" (the active manifest, or None), "errors"
    (failure codes)}. `valid` is True for the states Valid and Trusted; `trusted` needs the
    chain's CA among `trust_anchors_pem`. No manifest, a broken one or changed pixels -> valid
    False."""
    import c2pa
    ctx = None
    if trust_anchors_pem:
        pem = trust_anchors_pem.decode() if isinstance(trust_anchors_pem, bytes) else trust_anchors_pem
        ctx = c2pa.Context.from_dict({"trust": {"trust_anchors": pem}})
    try:
        reader = c2pa.Reader("image/png", io.BytesIO(png), context=ctx)
    except c2pa.C2paError.ManifestNotFound as e:
        return {"valid": False, "trusted": False, "state": "NoManifest", "manifest": None, "errors": [str(e)]}
    except c2pa.C2paError as e:  # a manifest too broken to read
        return {"valid": False, "trusted": False, "state": "Error", "manifest": None, "errors": [str(e)]}
    with reader:
        state = reader.get_validation_state() or "Unknown"
        results = reader.get_validation_results() or {}
        manifest = reader.get_active_manifest()
    failures = [f.get("code", "?") for f in (results.get("activeManifest") or {}).get("failure", [])]
    # "Valid": the signature and every hash check out; "Trusted": also a trusted chain. A
    # development chain is Valid with the failure code signingCredential.untrusted.
    return {"valid": state in _VALID_STATES, "trusted": state == "Trusted", "state": state,
            "manifest": manifest, "errors": failures}


def generation_assertion(manifest: dict | None) -> dict | None:
    """The org.easel.generation assertion's data in an active manifest (from verify())."""
    for a in (manifest or {}).get("assertions", []):
        if a.get("label") == GENERATION_ASSERTION:
            return a.get("data")
    return None


# ---------------------------------------------------------------- a development certificate chain
def make_dev_chain(out_dir: str, common_name: str = "Easel development signer",
                   days: int = 30) -> dict[str, str]:
    """Write a test CA and a signing certificate it issued (ECDSA P-256) under out_dir.

    Returns paths {"cert_chain" (leaf + CA, PEM), "key" (leaf key, PEM), "ca" (CA cert, PEM)}.
    The leaf has the key usage (digitalSignature) and extended key usage (emailProtection) that
    C2PA requires of a signing certificate. For tests and local development only: real
    deployments mount a chain from a real CA as a Kubernetes Secret."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Easel (development)")])

    def usage(**on) -> x509.KeyUsage:
        flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                     crl_sign=False, encipher_only=False, decipher_only=False)
        return x509.KeyUsage(**{**flags, **on})

    now = _dt.datetime.now(_dt.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("Easel development CA")).issuer_name(name("Easel development CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - _dt.timedelta(hours=1)).not_valid_after(now + _dt.timedelta(days=days + 1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name(common_name)).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(hours=1)).not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    os.makedirs(out_dir, exist_ok=True)
    pem = serialization.Encoding.PEM
    paths = {"cert_chain": os.path.join(out_dir, "chain.pem"), "key": os.path.join(out_dir, "signer.key"),
             "ca": os.path.join(out_dir, "ca.pem")}
    with open(paths["cert_chain"], "wb") as f:
        f.write(leaf.public_bytes(pem) + ca.public_bytes(pem))
    with open(paths["ca"], "wb") as f:
        f.write(ca.public_bytes(pem))
    # the key file is created private (0600) before any byte is written
    fd = os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def _dev_chain_usable(paths: dict[str, str]) -> bool:
    """An existing dev chain is reused while its signing certificate has a day left."""
    from cryptography import x509
    if not all(os.path.isfile(p) for p in paths.values()):
        return False
    try:
        with open(paths["cert_chain"], "rb") as f:
            leaf = x509.load_pem_x509_certificates(f.read())[0]
    except ValueError:
        return False
    return leaf.not_valid_after_utc > _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(days=1)


def signer_from_config(cfg: dict) -> ManifestSigner | None:
    """The signer the serve config names (provenance.cert_chain / .key); without them a
    development chain under EASEL_HOME/c2pa-dev (made once, reused), with a warning.
    None when provenance is disabled."""
    pv = cfg["provenance"]
    if not pv["enabled"]:
        log.warning("C2PA provenance is disabled (serve.provenance.enabled=false): images are unsigned")
        return None
    if pv["cert_chain"] and pv["key"]:
        return ManifestSigner(pv["cert_chain"], pv["key"], pv["alg"])
    from model_code.tracking import easel_home
    dev_dir = pv.get("dev_dir") or os.path.join(easel_home(), "c2pa-dev")
    paths = {"cert_chain": os.path.join(dev_dir, "chain.pem"), "key": os.path.join(dev_dir, "signer.key"),
             "ca": os.path.join(dev_dir, "ca.pem")}
    if not _dev_chain_usable(paths):
        try:
            paths = make_dev_chain(dev_dir)
        except OSError as e:   # a read-only root file system (the serving chart's default)
            raise ValueError(
                f"provenance: no C2PA signing certificate is configured and the development chain "
                f"cannot be written to {dev_dir} ({e.strerror or e}): give the server a signing "
                f"certificate (EASEL_C2PA_CERT_CHAIN and EASEL_C2PA_KEY; the chart's "
                f"provenance.secretName), or a writable directory for a development chain "
                f"(EASEL_C2PA_DEV_DIR or EASEL_HOME; the chart's provenance.devChain=true)") from None
    log.warning("no C2PA signing certificate configured (EASEL_C2PA_CERT_CHAIN / EASEL_C2PA_KEY): "
                "signing with a development chain in %s, which no verifier trusts", dev_dir)
    return ManifestSigner(paths["cert_chain"], paths["key"], "es256")
