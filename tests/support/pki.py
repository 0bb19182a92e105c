"""A real CA for tests, run by ``openssl ca`` so the index is OpenSSL's own."""

from __future__ import annotations

import datetime as dt
import secrets
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hsm_ocsp.cli.demo import openssl_cnf  # the same openssl ca set-up the demo uses


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"{args} failed ({done.returncode}): {done.stderr}{done.stdout}")
    return done.stdout


def generated_index_lines(count: int) -> list[str]:
    """Index rows as ``openssl ca`` writes them (no newline), for large indexes.

    One in ten revoked; random positive 16-byte serials and unique subjects, so
    ``openssl ca`` itself accepts the file. Used by the benchmarks and the soak.
    """
    lines = []
    for i in range(count):
        serial = "0" + secrets.token_hex(16).upper()[1:]
        if i % 10 == 0:
            lines.append(
                f"R\t301231235959Z\t250101000000Z,keyCompromise\t{serial}\tunknown\t/CN=gen-{i}"
            )
        else:
            lines.append(f"V\t301231235959Z\t\t{serial}\tunknown\t/CN=gen-{i}")
    return lines


class OpenSSLCA:
    """A CA directory driven by ``openssl ca``; its key is a P-256 file."""

    def __init__(self, directory: Path, common_name: str = "Test Root CA") -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "newcerts").mkdir(exist_ok=True)
        (directory / "index.txt").write_text("")
        (directory / "serial").write_text("1000\n")
        (directory / "crlnumber").write_text("01\n")
        self.cnf = directory / "openssl.cnf"
        self.cnf.write_text(openssl_cnf(directory))
        key = ec.generate_private_key(ec.SECP256R1())
        self.key = key
        self.key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (directory / "ca.key").write_bytes(self.key_pem)
        run(
            "openssl",
            "req",
            "-x509",
            "-new",
            "-key",
            directory / "ca.key",
            "-subj",
            f"/O=hsm-ocsp tests/CN={common_name}",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            directory / "ca.pem",
        )
        self.cert_path = directory / "ca.pem"
        self.index = directory / "index.txt"
        self.certificate = x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def issue(
        self,
        name: str,
        *,
        start: str | None = None,
        end: str | None = None,
        extensions: str = "leaf",
    ) -> Path:
        """Issue a leaf certificate for CN=name (its key beside it, NAME.key); returns its
        PEM path. ``extensions``: the openssl.cnf section (``leaf``: a TLS server's)."""
        key = self.dir / f"{name}.key"
        csr = self.dir / f"{name}.csr"
        pem = self.dir / f"{name}.pem"
        run(
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key,
            "-subj",
            f"/CN={name}",
            "-out",
            csr,
        )
        dates: list[str] = []
        if start:
            dates += ["-startdate", start]
        if end:
            dates += ["-enddate", end]
        run(
            "openssl",
            "ca",
            "-batch",
            "-config",
            self.cnf,
            "-extensions",
            extensions,
            "-notext",
            "-in",
            csr,
            "-out",
            pem,
            *dates,
        )
        return pem

    def revoke(self, pem: Path, *options: str) -> None:
        """``openssl ca -revoke`` with options like ``-crl_reason keyCompromise``."""
        run("openssl", "ca", "-config", self.cnf, "-revoke", pem, *options)

    def gencrl(self, out: Path, *options: str) -> Path:
        """``openssl ca -gencrl`` (DER) with options like ``-crlhours 1``; a new number."""
        pem = out.with_suffix(".tmp.pem")
        run("openssl", "ca", "-config", self.cnf, "-gencrl", "-out", pem, *options)
        run("openssl", "crl", "-in", pem, "-outform", "DER", "-out", out.with_suffix(".tmp"))
        out.with_suffix(".tmp").replace(out)  # whole at once, as a publisher should
        pem.unlink()
        return out

    def updatedb(self) -> None:
        run("openssl", "ca", "-config", self.cnf, "-updatedb")

    def serial_of(self, pem: Path) -> int:
        return x509.load_pem_x509_certificate(pem.read_bytes()).serial_number

    def sign_responder(
        self,
        public_key: object,
        name: str = "OCSP Responder",
        *,
        days: int = 365,
        eku: bool = True,
        nocheck: bool = True,
        issuer_key: object | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Path:
        """A delegated responder certificate for a (token) public key."""
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if eku:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
            )
        if nocheck:
            builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
        cert = builder.sign(issuer_key or self.key, hashes.SHA256())  # type: ignore[arg-type]
        path = self.dir / f"{name.replace(' ', '_')}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path
