"""Fleet log forwarding (provisioning/journal-upload.conf, docs/journald.md): the file is a
valid systemd configuration with [Upload] URL=https://... and the TLS files at the
documented paths; systemd finds it where install.sh puts it; install.sh --journal-upload-url
plans it (dry run); and, where systemd-journal-upload is installed, the real uploader reads
the file and uploads over mutual TLS with those three files to a local collector stand-in."""
import configparser
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "provisioning" / "journal-upload.conf"
INSTALL = ROOT / "provisioning" / "install.sh"
DOC = ROOT / "docs" / "journald.md"

#: where install.sh puts the file (a drop-in; the package's journal-upload.conf stays)
DROPIN = "/etc/systemd/journal-upload.conf.d/voxbox.conf"
TLS_DIR = "/etc/voxbox/journal-upload"
#: the documented TLS files (docs/journald.md)
TLS = {"ServerKeyFile": f"{TLS_DIR}/client.key",
       "ServerCertificateFile": f"{TLS_DIR}/client.pem",
       "TrustedCertificateFile": f"{TLS_DIR}/ca.pem"}
#: journal-upload.conf(5), systemd 252 (Debian 12) to 257
KNOWN_KEYS = {"URL", "ServerKeyFile", "ServerCertificateFile", "TrustedCertificateFile", "NetworkTimeoutSec"}
#: the uploader; VOXBOX_JOURNAL_UPLOAD names another binary (e.g. unpacked from the .deb)
UPLOADER = os.environ.get("VOXBOX_JOURNAL_UPLOAD", "/lib/systemd/systemd-journal-upload")


def strict_parse(text):
    """Parse as systemd.syntax(5) allows for this file, stricter than systemd: only comments,
    blank lines, [Section] headers and Key=Value lines; no continuation lines, no key before
    a section, no duplicate section or key. Returns {section: {key: value}}."""
    sections, current = {}, None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not raw.endswith("\\"), f"line {n}: continuation lines are not used here"
        m = re.fullmatch(r"\[([A-Za-z][A-Za-z0-9-]*)\]", line)
        if m:
            assert m.group(1) not in sections, f"line {n}: section [{m.group(1)}] twice"
            current = sections[m.group(1)] = {}
            continue
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)=(\S.*)", line)
        assert m, f"line {n}: not Key=Value: {raw!r}"
        assert current is not None, f"line {n}: key before any section"
        key, value = m.groups()
        assert key not in current, f"line {n}: {key} twice"
        assert value == value.strip() and value[0] not in "\"'", f"line {n}: quoted or padded value"
        current[key] = value
    # and the standard library's strict INI parser agrees
    cp = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",),
                                   comment_prefixes=("#", ";"), empty_lines_in_values=False)
    cp.optionxform = str  # systemd keys are case-sensitive
    cp.read_string(text)
    assert {s: dict(cp[s]) for s in cp.sections()} == sections
    return sections


def test_file_is_a_valid_journal_upload_conf():
    sections = strict_parse(CONF.read_text(encoding="ascii"))
    assert list(sections) == ["Upload"]
    upload = sections["Upload"]
    assert set(upload) <= KNOWN_KEYS, set(upload) - KNOWN_KEYS
    assert {"URL", *TLS} <= set(upload)

    url = urlsplit(upload["URL"])
    assert url.scheme == "https" and url.hostname and url.port == 19532
    assert url.username is None and url.password is None  # no credentials in a URL

    for key, path in TLS.items():
        assert upload[key] == path, key  # the documented paths, absolute


def test_docs_point_to_the_file_and_name_the_paths():
    doc = DOC.read_text(encoding="utf-8")
    section = doc[doc.index("## Fleet forwarding with systemd-journal-upload"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    assert "provisioning/journal-upload.conf" in section
    # the file is the one source: no inline copy of it
    assert "```ini" not in section and not re.search(r"(?m)^(URL|ServerKeyFile)=", section)
    for path in TLS.values():
        assert path in section, path
    assert DROPIN in section and "--journal-upload-url" in section
    assert "journal-upload.conf" in (ROOT / "provisioning" / "README.md").read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_finds_the_dropin_where_install_sh_puts_it(tmp_path):
    target = tmp_path / DROPIN.lstrip("/")
    target.parent.mkdir(parents=True)
    shutil.copy(CONF, target)
    out = subprocess.run(["systemd-analyze", f"--root={tmp_path}", "cat-config", "systemd/journal-upload.conf"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"# {target}" in out.stdout
    assert "URL=https://logs.example.net:19532" in out.stdout


def run_install(*args):
    return subprocess.run(["bash", str(INSTALL), "--dry-run", *args], check=False, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_install_sh_plans_the_upload_only_when_asked():
    url = "https://logs.fleet.example:19532"
    p = run_install("--journal-upload-url", url)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"would: install {DROPIN} (URL={url})" in p.stderr
    have = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "systemd-journal-remote"], check=False,
                          capture_output=True, text=True).stdout.endswith("ok installed")
    if have:  # ./dev installs it (the real uploader's test below): the apt step need not add it
        assert not any("install apt packages" in ln and "systemd-journal-remote" in ln
                       for ln in p.stderr.splitlines())
    else:
        assert "systemd-journal-remote" in p.stderr  # the package joins the apt step
    assert "enable systemd-journal-upload.service" in p.stderr

    p = run_install()
    assert p.returncode == 0, p.stderr[-3000:]
    assert "journal-upload" not in p.stderr

    for bad in ("http://logs.fleet.example:19532", "https://host|x", "logs.fleet.example"):
        p = run_install("--journal-upload-url", bad)
        assert p.returncode == 2 and "must be https://" in p.stderr, bad


# ------------------------------------------------------------ the real uploader
def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path):
    """A fleet CA, the collector's certificate (for 127.0.0.1) and the unit's client
    certificate, all signed by the CA."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=voxbox test fleet CA", cwd=d)
    for name, cn, ext in (("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                          ("client", "voxbox-test-unit", "extendedKeyUsage=clientAuth\n")):
        (d / f"{name}.ext").write_text(ext)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={cn}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


class Collector(threading.Thread):
    """A systemd-journal-remote stand-in: TLS with a required client certificate, one
    chunked POST /upload, answered 202."""

    def __init__(self, pki: Path):
        super().__init__(daemon=True)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
        self.ctx.load_verify_locations(pki / "ca.pem")
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(30)
        self.port = self.sock.getsockname()[1]
        self.peer_cn = None
        self.request = b""
        self.got_entry = threading.Event()
        self.error = None

    def run(self):
        try:
            raw, _ = self.sock.accept()
            raw.settimeout(30)
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                subject = dict(x[0] for x in conn.getpeercert()["subject"])
                self.peer_cn = subject.get("commonName")
                while b"\r\n\r\n" not in self.request:
                    self.request += conn.recv(65536) or b"\0EOF"
                if b"expect: 100-continue" in self.request.lower():
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                while not self.request.endswith(b"\r\n0\r\n\r\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    self.request += chunk
                    if b"MESSAGE=voxbox journal-upload test" in self.request:
                        self.got_entry.set()
                conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except Exception as exc:  # noqa: BLE001 - any failure is reported by the test
            self.error = exc
        finally:
            self.got_entry.set()
            self.sock.close()


def test_the_uploader_reads_the_file_and_uploads_over_mutual_tls(tmp_path):
    """systemd-journal-upload itself, in a private mount namespace where /etc is an overlay
    (nothing on the machine changes): the file as the drop-in install.sh writes (its URL
    pointed at a local collector stand-in), the TLS files at the documented paths. The
    collector sees the unit's client certificate and the entry; the uploader, which checked
    the collector against TrustedCertificateFile=, reports no unknown key and exits 0."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    if not os.access(UPLOADER, os.X_OK):
        pytest.skip(f"{UPLOADER} is not installed (Debian package systemd-journal-remote, which './dev test' installs; "
                    "VOXBOX_JOURNAL_UPLOAD may name one unpacked from the .deb): the file's syntax, "
                    "keys and paths are checked by the tests above")
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace (the uploader reads only /etc, /run, /usr/lib)")
    for tool in ("unshare", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")

    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    collector = Collector(pki)
    # what install.sh does: URL= replaced, the rest as shipped
    text = re.sub(r"(?m)^URL=.*$", f"URL=https://127.0.0.1:{collector.port}", CONF.read_text())
    (tmp_path / "voxbox.conf").write_text(text)
    for d in ("upper", "work"):
        (tmp_path / d).mkdir()
    script = f"""set -e
mount --make-rprivate /
mount -t overlay overlay -o lowerdir=/etc,upperdir={tmp_path}/upper,workdir={tmp_path}/work /etc
mkdir -p {Path(DROPIN).parent} {TLS_DIR}
cp {tmp_path}/voxbox.conf {DROPIN}
cp {pki}/client.key {TLS['ServerKeyFile']}
cp {pki}/client.pem {TLS['ServerCertificateFile']}
cp {pki}/ca.pem {TLS['TrustedCertificateFile']}
exec {UPLOADER} -
"""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --make-rprivate / && mount -t tmpfs t /mnt"],
                           check=False, capture_output=True, timeout=30)
    if probe.returncode:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode(errors='replace').strip()}")

    collector.start()
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="debug", SYSTEMD_LOG_TARGET="console")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        # journal export format: one entry, ended by an empty line
        proc.stdin.write(b"MESSAGE=voxbox journal-upload test\nSYSLOG_IDENTIFIER=voxbox\n\n")
        proc.stdin.flush()
        collector.got_entry.wait(60)
        # closes stdin, the end of input: the uploader ends the request and exits
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    collector.join(30)
    log = err.decode(errors="replace")
    print(log)
    assert "Unknown key" not in log and "Failed to parse" not in log, log
    assert f"127.0.0.1:{collector.port}" in log  # URL= came from the drop-in
    assert collector.error is None, f"{collector.error!r}\n{log}"
    assert collector.peer_cn == "voxbox-test-unit"  # ServerKeyFile= and ServerCertificateFile=
    assert b"POST /upload" in collector.request
    assert b"MESSAGE=voxbox journal-upload test" in collector.request
    assert proc.returncode == 0, log  # the collector passed TrustedCertificateFile=
