"""A private Mosquitto broker for the MQTT adapter's tests and bench.

Each Broker has its own directory, config (never the system one), ports on
loopback and, with tls=True, a TLS listener whose certificate comes from a
test CA generated here with python3-cryptography. Only the PID it started
is ever signalled."""
import datetime
import ipaddress
import os
import pwd
import signal
import socket
import subprocess
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory, cn="kfgate test CA"):
    """A CA key and certificate; returns (key, cert, cert_path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = os.path.join(directory, cn.replace(" ", "_") + ".crt")
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_server_cert(directory, ca_key, ca_cert, client=False):
    """A server certificate for 127.0.0.1 / localhost (or, client=True, a
    client certificate) signed by the CA; returns (cert_path, key_path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    eku = x509.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.ExtendedKeyUsageOID.SERVER_AUTH
    cert = (x509.CertificateBuilder().subject_name(_name("kfgate-client" if client
                                                         else "localhost"))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    stem = "client" if client else "server"
    cp = os.path.join(directory, stem + ".crt")
    kp = os.path.join(directory, stem + ".key")
    with open(cp, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(kp, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(kp, 0o600)
    return cp, kp


class Broker:
    def __init__(self, directory, tls=False, persistence=True, extra="", port=None):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.port = port or free_port()
        self.tls_port = free_port() if tls else None
        self.conf = os.path.join(directory, "mosquitto.conf")
        self.log_path = os.path.join(directory, "mosquitto.log")
        self.proc = None
        self.ca_path = None
        # Run as whoever runs the tests: started as root, mosquitto would
        # switch to the "mosquitto" user, which cannot read this directory.
        lines = ["user %s" % pwd.getpwuid(os.getuid()).pw_name,
                 "per_listener_settings false", "allow_anonymous true",
                 "log_dest file %s" % self.log_path,
                 "log_type error", "log_type warning", "log_type notice",
                 "connection_messages true",
                 # Deep enough queues that the tests measure the gateway,
                 # not the broker's defaults (100 queued per client).
                 "max_queued_messages 100000", "max_inflight_messages 100",
                 "listener %d 127.0.0.1" % self.port]
        if persistence:
            # Sessions (subscriptions and queued QoS 1 messages) survive a
            # broker restart, saved every second (a SIGKILL loses at most
            # the last second's changes; see spec/mqtt.md).
            lines += ["persistence true",
                      "persistence_location %s/" % directory,
                      "autosave_interval 1"]
        if tls:
            ca_key, ca_cert, self.ca_path = make_ca(directory)
            cp, kp = make_server_cert(directory, ca_key, ca_cert)
            # For mutual TLS tests: a client certificate from the same CA.
            self.client_cert, self.client_key = make_server_cert(directory, ca_key, ca_cert,
                                                                 client=True)
            lines += ["listener %d 127.0.0.1" % self.tls_port,
                      "certfile %s" % cp, "keyfile %s" % kp, "cafile %s" % self.ca_path]
        lines.append(extra)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    @property
    def url(self):
        return "mqtt://127.0.0.1:%d" % self.port

    @property
    def tls_url(self):
        return "mqtts://127.0.0.1:%d" % self.tls_port

    def start(self, cpu=None):
        argv = [MOSQUITTO, "-c", self.conf]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mosquitto exited: %s" % self.log())
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not come up: %s" % self.log())

    def kill(self):
        """SIGKILL: no goodbye, no final save."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""
