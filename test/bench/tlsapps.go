//go:build linux

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// nginxPath is Debian's nginx (nginx-light: `make bench` installs it for the
// https-nginx workloads).
const nginxPath = "/usr/sbin/nginx"

// writeSelfSigned writes a fresh self-signed ECDSA P-256 certificate for
// 127.0.0.1 and its key to dir/cert.pem and dir/key.pem (what the HTTPS
// workloads' Python and nginx servers present; wrk does not verify it).
func writeSelfSigned(dir string) (cert, key string, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return "", "", fmt.Errorf("self-signed certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		return "", "", err
	}
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return "", "", err
	}
	return cert, key, nil
}

// nginxConf is one nginx instance of the https-nginx workloads: one worker,
// no access log, keep-alive connections that are never closed for their
// request count (nginx closes a client connection after 1000 requests by
// default, which would add a TLS handshake per 1000 requests to every run),
// HTTPS on 127.0.0.1:<port>. Arguments: user line, prefix directory (pid,
// temp paths), the certificate and key, the port, the server's location
// block, and extra http-level lines (the upstream pool).
const nginxConf = `%sworker_processes 1;
pid %[2]s/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %[2]s/client_body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
%[7]s    server {
        listen 127.0.0.1:%[5]d ssl;
        ssl_certificate %[3]s;
        ssl_certificate_key %[4]s;
%[6]s    }
}
`

// nginxStatic answers GET /hello itself.
const nginxStatic = `        location = /hello {
            default_type text/plain;
            return 200 "hello\n";
        }
`

// nginxUpstream is the front's pool of keep-alive HTTPS connections to the
// backend (TLS sessions reused), and nginxProxy its location forwarding
// GET /hello there: a CLIENT request over TLS for each request it serves.
const (
	nginxUpstream = `    upstream backend {
        server 127.0.0.1:%d;
        keepalive 32;
        keepalive_requests 1000000;
    }
`
	nginxProxy = `        location = /hello {
            proxy_pass https://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_session_reuse on;
        }
`
)

// startNginx starts nginx (master and one worker, not daemonized) serving
// HTTPS on port from a configuration in its own directory under tmp; with
// upstreamPort > 0 it forwards GET /hello over HTTPS to 127.0.0.1:upstreamPort,
// else answers it itself. It returns once the worker is running and nginx
// answers GET /hello with 200 (a backend must be up first), with the
// worker's pid: nginx's spans and CPU are the worker's.
func startNginx(ctx context.Context, tmp, name, cpus, cert, key string, port, upstreamPort int) (*proc, int, error) {
	dir := filepath.Join(tmp, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, err
	}
	user := ""
	if os.Geteuid() == 0 {
		// Workers run as nobody otherwise, who cannot read the key.
		user = "user root;\n"
	}
	location, upstream := nginxStatic, ""
	if upstreamPort > 0 {
		location, upstream = nginxProxy, fmt.Sprintf(nginxUpstream, upstreamPort)
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, nginxConf, user, dir, cert, key, port, location, upstream), 0o644); err != nil {
		return nil, 0, err
	}
	errLog := filepath.Join(dir, "error.log")
	p, err := startPinned(ctx, cpus, name, 0, nil, nginxPath, "-p", dir, "-e", errLog, "-c", conf, "-g", "daemon off;")
	if err != nil {
		return nil, 0, err
	}
	fail := func(err error) (*proc, int, error) {
		log, _ := os.ReadFile(errLog)
		p.kill()
		return nil, 0, fmt.Errorf("%s: %w\nerror.log:\n%s%s", name, err, log, p.output())
	}
	url := fmt.Sprintf("https://127.0.0.1:%d/hello", port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := p.alive(); err != nil {
			return fail(err)
		}
		workers := childrenOf(p.pid())
		if len(workers) == 1 && getOK(ctx, url) == nil {
			return p, workers[0], nil
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("not answering GET %s with one worker (workers %v) after 20s: %v", url, workers, getOK(ctx, url)))
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return fail(err)
		}
	}
}

// childrenOf lists the processes whose parent is pid (/proc/<n>/stat; this
// kernel has no /proc/<pid>/task/<tid>/children).
func childrenOf(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// tlsBenchClient is benchClient for the HTTPS workloads' self-signed
// certificates.
var tlsBenchClient = &http.Client{Transport: &http.Transport{
	Proxy: nil, DisableKeepAlives: true,
	TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the bench's own self-signed certificate
}, Timeout: 5 * time.Second}

// getOK GETs url (on a connection of its own) and wants 200.
func getOK(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := tlsBenchClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
