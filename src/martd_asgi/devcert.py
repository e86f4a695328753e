"""A self-signed certificate for development HTTPS (``martd serve --ssl``).

Made on first use with ``trustme`` (an authority of its own plus a certificate
for ``localhost``, ``127.0.0.1`` and ``::1`` that it signed), kept in the user's
cache directory and reused while it is valid. The authority's private key is
never written anywhere: trusting ``ca.pem`` lets nobody sign anything else with
it, and a new authority is made when the certificate runs out. No key ships
inside the package.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

NAMES = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 800  # below the 825 days some systems accept for a server certificate
RENEW_DAYS = 7


@dataclass(frozen=True)
class DevCertificate:
    directory: Path
    ca: Path  # the authority to trust
    cert: Path  # the server's certificate chain (uvicorn's ssl_certfile)
    key: Path  # the server's private key (uvicorn's ssl_keyfile)
    expires: datetime.datetime
    created: bool

    def instructions(self) -> str:
        """How to find and trust it, for the terminal."""
        return "\n".join(
            [
                f"martd: development certificate for {', '.join(NAMES)} in {self.directory}"
                + (" (new)" if self.created else ""),
                f"martd: certificate authority to trust: {self.ca}",
                f"martd:   curl --cacert {self.ca} https://localhost:PORT/...",
                f"martd:   python: httpx.Client(verify=ssl.create_default_context(cafile='{self.ca}'))",
                (
                    "martd:   browsers: import it as a certificate authority (Chrome/Edge: "
                    "Settings > Privacy and security > Security > Manage certificates > "
                    "Authorities; Firefox: Settings > Certificates > View Certificates > "
                    "Authorities)"
                ),
                f"martd: valid until {self.expires:%Y-%m-%d}; delete the folder to make a new one",
            ]
        )


def cache_directory() -> Path:
    """``MARTD_CERT_DIR``, else the user's cache directory (``~/.cache/martd/devcert``)."""
    configured = os.environ.get("MARTD_CERT_DIR")
    if configured:
        return Path(configured).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "martd" / "devcert"
    return Path(user_cache_dir("martd")) / "devcert"


def dev_certificate(directory: Path | None = None) -> DevCertificate:
    """The development certificate in ``directory``: reused while valid, made otherwise."""
    folder = directory if directory is not None else cache_directory()
    ca, cert, key = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    expires = _valid_until(cert) if ca.is_file() and key.is_file() else None
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=RENEW_DAYS)
    if expires is not None and expires > soon:
        return DevCertificate(folder, ca, cert, key, expires, created=False)
    expires = _make(folder, ca, cert, key)
    return DevCertificate(folder, ca, cert, key, expires, created=True)


def _valid_until(cert: Path) -> datetime.datetime | None:
    from cryptography import x509

    try:
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
        names = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    found = {str(n) for n in names.get_values_for_type(x509.DNSName)}
    found |= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    if not set(NAMES) <= found:
        return None
    return loaded.not_valid_after_utc


def _make(folder: Path, ca_path: Path, cert_path: Path, key_path: Path) -> datetime.datetime:
    try:
        import trustme
    except ImportError:
        raise RuntimeError(
            "--ssl needs the trustme package: pip install 'martd_asgi[ssl]'"
        ) from None
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=VALID_DAYS)
    authority = trustme.CA(organization_name="martd development")
    leaf = authority.issue_cert(
        *NAMES, organization_name="martd development", not_after=expires.replace(tzinfo=None)
    )
    _write(key_path, leaf.private_key_pem.bytes(), private=True)
    _write(cert_path, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    _write(ca_path, authority.cert_pem.bytes())
    return expires.replace(microsecond=0)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    temporary = path.with_suffix(".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    descriptor = os.open(temporary, flags, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.replace(temporary, path)
