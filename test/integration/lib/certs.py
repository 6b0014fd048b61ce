"""Test PKI generated at test time with the openssl CLI (no key is ever committed).

    pki = Pki(tmp_path)                       # a CA ("Legate Test CA")
    srv = pki.issue("server", dns=["localhost", "a.example.com"], ip=["127.0.0.1"])
    ec = pki.issue("server-ec", dns=["localhost"], key="ec")
    cli = pki.issue("client", uri=["spiffe://cluster.local/ns/default/sa/client"], client=True)
    old = pki.issue("expired", dns=["localhost"], expired=True)
    other = Pki(tmp_path / "other", cn="Untrusted CA")   # a CA nobody trusts

Each issued Cert has .cert and .key paths (PEM) and .chain_pem()/.key_pem()
for inline use. Keys are RSA 2048 or ECDSA P-256.
"""
import os
import subprocess


def _run(args, cwd):
    r = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("openssl failed: %s\n%s" % (" ".join(args), r.stderr))
    return r.stdout


def _genkey(path, key, cwd):
    if key == "ec":
        _run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path], cwd)
    else:
        _run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path], cwd)


class Cert:
    def __init__(self, name, cert, key):
        self.name = name
        self.cert = str(cert)
        self.key = str(key)

    def chain_pem(self):
        with open(self.cert) as f:
            return f.read()

    def key_pem(self):
        with open(self.key) as f:
            return f.read()

    def fingerprint_sha256(self):
        """Hex SHA-256 of the DER certificate (verify_certificate_hash)."""
        out = _run(["openssl", "x509", "-in", self.cert, "-noout", "-fingerprint", "-sha256"], os.path.dirname(self.cert))
        return out.strip().split("=", 1)[1]

    def spki_sha256_b64(self):
        """Base64 SHA-256 of the DER SubjectPublicKeyInfo (verify_certificate_spki)."""
        d = os.path.dirname(self.cert)
        pub = _run(["openssl", "x509", "-in", self.cert, "-noout", "-pubkey"], d)
        r = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub.encode(), stdout=subprocess.PIPE,
                           check=True, timeout=30)
        r2 = subprocess.run(["openssl", "dgst", "-sha256", "-binary"], input=r.stdout, stdout=subprocess.PIPE, check=True,
                            timeout=30)
        r3 = subprocess.run(["openssl", "base64", "-A"], input=r2.stdout, stdout=subprocess.PIPE, check=True, timeout=30)
        return r3.stdout.decode().strip()

    def subject(self):
        return _run(["openssl", "x509", "-in", self.cert, "-noout", "-subject"], os.path.dirname(self.cert)).strip()


class Pki:
    """A CA in `directory` that issues server and client certificates."""

    def __init__(self, directory, cn="Legate Test CA", key="ec"):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.ca_key = os.path.join(self.dir, "ca.key")
        self.ca_cert = os.path.join(self.dir, "ca.pem")
        _genkey(self.ca_key, key, self.dir)
        _run(["openssl", "req", "-x509", "-new", "-key", self.ca_key, "-out", self.ca_cert, "-days", "30", "-subj",
              "/O=Legate Tests/CN=%s" % cn, "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], self.dir)
        self._serial = 1

    def _ext_file(self, name, dns, ip, uri, client):
        sans = ["DNS:%s" % d for d in dns] + ["IP:%s" % i for i in ip] + ["URI:%s" % u for u in uri]
        lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                 "extendedKeyUsage=%s" % ("clientAuth,serverAuth" if client else "serverAuth,clientAuth")]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        path = os.path.join(self.dir, name + ".ext")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def _ca_config(self, name, ext):
        """A minimal `openssl ca` config, for certificates with explicit dates."""
        db = os.path.join(self.dir, name + ".db")
        open(db, "w").close()
        path = os.path.join(self.dir, name + ".cnf")
        with open(path, "w") as f:
            f.write("[ca]\ndefault_ca=tca\n[tca]\ndatabase=%s\nnew_certs_dir=%s\ncertificate=%s\nprivate_key=%s\n"
                    "default_md=sha256\npolicy=anything\nunique_subject=no\nserial=%s\n"
                    "[anything]\ncommonName=supplied\norganizationName=optional\n"
                    % (db, self.dir, self.ca_cert, self.ca_key, os.path.join(self.dir, name + ".srl")))
        with open(os.path.join(self.dir, name + ".srl"), "w") as f:
            f.write("%02X\n" % (100 + self._serial))
        return path

    def issue(self, name, dns=(), ip=(), uri=(), key="rsa", client=False, expired=False, cn=None, days=10):
        key_path = os.path.join(self.dir, name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        cert = os.path.join(self.dir, name + ".pem")
        _genkey(key_path, key, self.dir)
        _run(["openssl", "req", "-new", "-key", key_path, "-out", csr, "-subj",
              "/O=Legate Tests/CN=%s" % (cn or (dns[0] if dns else name))], self.dir)
        ext = self._ext_file(name, dns, ip, uri, client)
        self._serial += 1
        if expired:
            conf = self._ca_config(name, ext)
            _run(["openssl", "ca", "-batch", "-config", conf, "-in", csr, "-out", cert, "-extfile", ext, "-notext",
                  "-startdate", "20200101000000Z", "-enddate", "20200201000000Z"], self.dir)
        else:
            _run(["openssl", "x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key, "-set_serial",
                  str(self._serial), "-days", str(days), "-sha256", "-extfile", ext, "-out", cert], self.dir)
        return Cert(name, cert, key_path)
