//! Certificates of the test's own, made with the `openssl` command: a CA, and server and client
//! certificates it signs (ECDSA P-256, valid for a day), for private TLS listeners.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate authority in a directory of its own (removed when dropped).
pub struct TestCa {
    pub dir: PathBuf,
    /// The CA's certificate (PEM): what clients and servers trust.
    pub cert: PathBuf,
    key: PathBuf,
}

/// A certificate and its key (PEM, PKCS#8) signed by a [`TestCa`].
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestCa {
    /// Client TLS settings that trust this CA's certificates (and present none of their own).
    pub fn trusted(&self) -> edge::connect::tls::TlsMaterial {
        let files =
            edge::connect::tls::TlsFiles { ca_file: Some(self.cert.clone()), client_cert: None, client_key: None };
        files.load().expect("the test CA's certificate")
    }

    /// A new CA named `name`, in a new directory readable by the `rabbitmq` user (the broker
    /// reads its certificate and key there).
    pub fn new(name: &str) -> TestCa {
        let dir = PathBuf::from("/tmp").join(crate::unique(&format!("tls-{name}")));
        std::fs::create_dir_all(&dir).expect("ca dir");
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        TestCa { dir, cert, key }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self, name: &str) -> Issued {
        self.issue(name, name, "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    }

    /// A client certificate whose common name is `user` (the broker's EXTERNAL login).
    pub fn client(&self, user: &str) -> Issued {
        self.issue(user, user, "extendedKeyUsage=clientAuth\n")
    }

    fn issue(&self, file: &str, common_name: &str, extensions: &str) -> Issued {
        let ext = self.dir.join(format!("{file}.ext"));
        std::fs::write(&ext, format!("basicConstraints=CA:FALSE\n{extensions}")).expect("extensions");
        let (key, csr, cert) = (format!("{file}.key"), format!("{file}.csr"), format!("{file}.pem"));
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={common_name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        let ca_key = self.key.display().to_string();
        let ca_cert = self.cert.display().to_string();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{file}.ext"),
                "-out",
                &cert,
            ],
        );
        let _ = Command::new("chown").args(["-R", "rabbitmq:rabbitmq"]).arg(&self.dir).status();
        Issued { cert: self.dir.join(cert), key: self.dir.join(key) }
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
