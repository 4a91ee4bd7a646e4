"""A real OpenLDAP ``slapd`` (Debian ``slapd``) in a throwaway cn=config directory, on a free loopback port.

The suffix ``dc=example,dc=com`` sits on an mdb database with the overlays a directory sync meets in the field:
``syncprov`` (the RFC 4533 change feed), ``ppolicy`` (``pwdAccountLockedTime`` locks), ``memberof`` and
``refint``. A small schema adds the Active Directory attributes ``userAccountControl``, ``sAMAccountName`` and
``accountExpires`` (an integer, as AD's Large Integer; auxiliary class ``channelgateAdUser``) and 389 DS's
``nsAccountLock``, so AD-style and 389-style disablement filters run unchanged. ``tls=True`` also listens with
LDAPS on a second port, with a certificate issued by a throwaway CA (``ca_file``) for ``127.0.0.1``.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.components.ports import LOOPBACK, free_port, port_is_open
from tests.components.process import ChildProcess, ComponentFailed, Lifecycle, ServerProcess, require_executable

SUFFIX = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "admin-secret"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
FORMER = f"ou=former,{SUFFIX}"
#: The account channelgate binds as: not the root DN, so the server's size limits apply to it.
SYNC_DN = f"cn=sync,{SUFFIX}"
SYNC_PASSWORD = "sync-secret"
MODULE_DIR = "/usr/lib/ldap"

_SCHEMA = """\
dn: cn=channelgate-test,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: channelgate-test
olcAttributeTypes: ( 1.3.6.1.4.1.99999.1.1 NAME 'userAccountControl'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
olcAttributeTypes: ( 1.3.6.1.4.1.99999.1.2 NAME 'sAMAccountName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcAttributeTypes: ( 1.3.6.1.4.1.99999.1.3 NAME 'nsAccountLock'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcAttributeTypes: ( 1.3.6.1.4.1.99999.1.4 NAME 'accountExpires'
  EQUALITY integerMatch ORDERING integerOrderingMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
olcObjectClasses: ( 1.3.6.1.4.1.99999.2.1 NAME 'channelgateAdUser' AUXILIARY
  MAY ( userAccountControl $ sAMAccountName $ nsAccountLock $ accountExpires ) )
"""


def _config_ldif(
    directory: Path, tls: tuple[Path, Path] | None, size_limit: int | None, paged_total_limit: int | None = None
) -> str:
    """cn=config for the server; ``size_limit`` caps one search's entries (paged searches pass through it), and
    ``paged_total_limit`` caps a paged search's entries over all its pages (then sizeLimitExceeded)."""
    limit = "unlimited" if size_limit is None else str(size_limit)
    paged_total = "unlimited" if paged_total_limit is None else str(paged_total_limit)
    schema = "/etc/ldap/schema"
    includes = "".join(f"include: file://{schema}/{name}.ldif\n" for name in ("core", "cosine", "inetorgperson"))
    tls_lines = "" if tls is None else f"olcTLSCertificateFile: {tls[0]}\nolcTLSCertificateKeyFile: {tls[1]}\n"
    return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {directory}/slapd.pid
{tls_lines}
dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_DIR}
olcModuleLoad: back_mdb
olcModuleLoad: syncprov
olcModuleLoad: ppolicy
olcModuleLoad: memberof
olcModuleLoad: refint

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{includes}
{_SCHEMA}
dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcSizeLimit: unlimited

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcRootDN: cn=config

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {SUFFIX}
olcRootDN: {ROOT_DN}
olcRootPW: {ROOT_PASSWORD}
olcDbDirectory: {directory}/data
olcDbMaxSize: 1073741824
olcDbNoSync: TRUE
olcSizeLimit: {limit}
olcLimits: * size.soft={limit} size.hard={limit} size.prtotal={paged_total} size.pr=unlimited
olcDbIndex: objectClass eq
olcDbIndex: entryUUID,entryCSN eq
olcDbIndex: uid,member,memberOf eq

dn: olcOverlay={{0}}syncprov,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {{0}}syncprov
olcSpCheckpoint: 100 10

dn: olcOverlay={{1}}ppolicy,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcPPolicyConfig
olcOverlay: {{1}}ppolicy

dn: olcOverlay={{2}}memberof,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcMemberOf
olcOverlay: {{2}}memberof
olcMemberOfRefInt: TRUE

dn: olcOverlay={{3}}refint,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcRefintConfig
olcOverlay: {{3}}refint
olcRefintAttribute: member
"""


def _base_ldif() -> str:
    return f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: {PEOPLE}
objectClass: organizationalUnit
ou: people

dn: {GROUPS}
objectClass: organizationalUnit
ou: groups

dn: {FORMER}
objectClass: organizationalUnit
ou: former

dn: {SYNC_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: sync
userPassword: {SYNC_PASSWORD}
"""


def filetime(moment: datetime.datetime) -> int:
    """``moment`` as Active Directory's accountExpires holds it: 100-ns intervals since 1601-01-01 UTC."""
    delta = moment - datetime.datetime(1601, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def person_ldif(
    uid: str,
    *,
    mail: str | None = None,
    employee_number: str | None = None,
    manager: str | None = None,
    user_account_control: int | None = 512,
    account_expires: int | None = None,
) -> str:
    """An ``inetOrgPerson`` (with the AD look-alike class) under ``ou=people``."""
    lines = [
        f"dn: uid={uid},{PEOPLE}",
        "objectClass: inetOrgPerson",
        "objectClass: channelgateAdUser",
        f"uid: {uid}",
        f"cn: {uid.capitalize()} Agent",
        "sn: Agent",
        f"displayName: {uid.capitalize()} Agent",
        f"mail: {mail or uid + '@example.com'}",
        f"sAMAccountName: {uid}",
    ]
    if employee_number is not None:
        lines.append(f"employeeNumber: {employee_number}")
    if manager is not None:
        lines.append(f"manager: uid={manager},{PEOPLE}")
    if user_account_control is not None:
        lines.append(f"userAccountControl: {user_account_control}")
    if account_expires is not None:
        lines.append(f"accountExpires: {account_expires}")
    return "\n".join(lines) + "\n"


def group_ldif(name: str, members: Iterable[str]) -> str:
    """A ``groupOfNames`` under ``ou=groups``; ``members`` are uids or full DNs (nested groups)."""
    lines = [f"dn: cn={name},{GROUPS}", "objectClass: groupOfNames", f"cn: {name}"]
    chosen = list(members) or [ROOT_DN]  # groupOfNames needs one member; the root DN is nobody we sync
    lines += [f"member: {m if '=' in m else f'uid={m},{PEOPLE}'}" for m in chosen]
    return "\n".join(lines) + "\n"


def _self_signed(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 it issued: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "channelgate test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class LdapServer(ServerProcess, Lifecycle):
    """A throwaway ``slapd`` child process with the base entries (people, groups, former) loaded.

    ``preload`` (LDIF) is loaded offline with ``slapadd`` before the start, which is how a test gets thousands
    of entries in a second; overlays do not run for it (no ``memberOf``), so preloaded groups are read by their
    ``member`` values. Everything written after the start goes through ``ldapmodify`` and the overlays.
    """

    def __init__(
        self,
        *,
        tls: bool = False,
        preload: str = "",
        size_limit: int | None = None,
        paged_total_limit: int | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.directory = Path(tempfile.mkdtemp(prefix="channelgate-slapd-"))
        self._slapd = require_executable("slapd", "slapd")
        self._slapadd = require_executable("slapadd", "slapd")
        self._ldapmodify = require_executable("ldapmodify", "ldap-utils")
        self.ca_file: Path | None = None
        certificate: tuple[Path, Path] | None = None
        if tls:
            self.ca_file, cert, key = _self_signed(self.directory)
            certificate = (cert, key)
        (self.directory / "data").mkdir()
        (self.directory / "slapd.d").mkdir()
        config = _config_ldif(self.directory, certificate, size_limit, paged_total_limit)
        (self.directory / "config.ldif").write_text(config)
        (self.directory / "base.ldif").write_text(_base_ldif() + ("\n" + preload if preload else ""))
        self._offline("config.ldif", "-n0")
        self._offline("base.ldif", "-n1")
        urls = f"ldap://{LOOPBACK}:{self.port}/"
        if self.tls_port is not None:
            urls += f" ldaps://{LOOPBACK}:{self.tls_port}/"
        argv = [self._slapd, "-h", urls, "-F", str(self.directory / "slapd.d"), "-d", "0"]
        process = ChildProcess(argv, self.directory / "slapd.log", name=f"slapd :{self.port}")
        super().__init__(process, self.directory, startup_timeout=startup_timeout)

    def _offline(self, ldif: str, database: str) -> None:
        argv = [self._slapadd, database, "-F", str(self.directory / "slapd.d"), "-l", str(self.directory / ldif)]
        if database == "-n1":
            argv.append("-q")
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise ComponentFailed(f"slapadd {ldif} failed: {result.stderr[-2000:]}")

    @property
    def url(self) -> str:
        return f"ldap://{LOOPBACK}:{self.port}"

    @property
    def ldaps_url(self) -> str:
        assert self.tls_port is not None, "start the server with tls=True"
        return f"ldaps://{LOOPBACK}:{self.tls_port}"

    def modify(self, ldif: str) -> None:
        """Apply LDIF change records (``changetype: add|modify|delete|modrdn``) as the root DN, online."""
        argv = [self._ldapmodify, "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD, "-c"]
        result = subprocess.run(argv, input=ldif, capture_output=True, text=True, check=False, timeout=60)
        if result.returncode != 0:
            raise ComponentFailed(f"ldapmodify failed ({result.returncode}): {result.stderr[-2000:]}")

    def add(self, ldif: str) -> None:
        """Add entries (plain LDIF records) online, so the overlays (memberOf) see them."""
        self.modify("\n".join(_with_changetype_add(ldif)))

    def start(self) -> None:
        ports = [self.port] + ([self.tls_port] if self.tls_port is not None else [])
        self._start_and_wait(lambda: all(port_is_open(LOOPBACK, p) for p in ports), what="listening")


def _with_changetype_add(ldif: str) -> list[str]:
    """Plain LDIF records → ``changetype: add`` records (after each ``dn:`` line)."""
    lines: list[str] = []
    for line in ldif.splitlines():
        lines.append(line)
        if line.startswith("dn: "):
            lines.append("changetype: add")
    return lines
