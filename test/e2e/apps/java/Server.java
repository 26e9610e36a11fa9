// End-to-end test app: Java standard library HTTP/1.1 server.
//
// Usage: java Server.java <port>   (or PORT in the environment)
//
// com.sun.net.httpserver with a cached thread pool (a thread per request),
// keep-alive on, outbound calls with HttpURLConnection on the serving thread
// (java.net.http.HttpClient would write from its own selector thread), each
// on a new connection (http.keepAlive=false: Connection: close).
// Endpoints are the same in every language; see test/e2e/doc.go.

import com.sun.net.httpserver.Headers;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Executors;

public class Server {
    public static void main(String[] args) throws IOException {
        int port = Integer.parseInt(args.length > 0 ? args[0] : System.getenv("PORT"));
        // A new connection per outbound call: no pooled keep-alive connection.
        System.setProperty("http.keepAlive", "false");
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 1024);
        server.createContext("/", Server::handle);
        server.setExecutor(Executors.newCachedThreadPool());
        server.start();
        System.out.println("ready");
        System.out.flush();
    }

    static void handle(HttpExchange ex) throws IOException {
        try {
            route(ex);
        } catch (Exception e) {
            reply(ex, 500, "internal error: " + e, "text/plain");
        } finally {
            ex.close();
        }
    }

    static String traceparent(HttpExchange ex) {
        String v = ex.getRequestHeaders().getFirst("traceparent");
        return v == null ? "" : v;
    }

    static int traceparentCount(HttpExchange ex) {
        List<String> v = ex.getRequestHeaders().get("Traceparent");
        return v == null ? 0 : v.size();
    }

    /** The first n bytes of 0123456789 repeated: /call's pad and body. */
    static byte[] pattern(int n) {
        byte[] b = new byte[Math.max(n, 0)];
        for (int i = 0; i < b.length; i++) {
            b[i] = (byte) ('0' + i % 10);
        }
        return b;
    }

    static int intParam(String rawQuery, String name) {
        String v = queryParam(rawQuery, name);
        return v == null || v.isEmpty() ? 0 : Integer.parseInt(v);
    }

    static void route(HttpExchange ex) throws Exception {
        String method = ex.getRequestMethod();
        String path = ex.getRequestURI().getPath();
        byte[] body = ex.getRequestBody().readAllBytes();
        if (method.equals("GET") && path.equals("/hello")) {
            reply(ex, 200, "hello", "text/plain");
        } else if (method.equals("GET") && path.startsWith("/status/")) {
            int code;
            try {
                code = Integer.parseInt(path.substring("/status/".length()));
            } catch (NumberFormatException e) {
                code = 0;
            }
            if (code >= 200 && code <= 599) {
                reply(ex, code, "", "text/plain");
            } else {
                reply(ex, 400, "bad status code", "text/plain");
            }
        } else if (method.equals("GET") && path.equals("/call")) {
            String query = ex.getRequestURI().getRawQuery();
            String target = queryParam(query, "url");
            if (target == null || target.isEmpty()) {
                reply(ex, 400, "missing url", "text/plain");
                return;
            }
            String tp = queryParam(query, "traceparent");
            int pad = intParam(query, "pad");
            String outMethod = queryParam(query, "method");
            if (outMethod == null || outMethod.isEmpty()) {
                outMethod = "GET";
            }
            int status;
            String downBody;
            try {
                HttpURLConnection conn = (HttpURLConnection) URI.create(target).toURL().openConnection();
                conn.setConnectTimeout(10000);
                conn.setReadTimeout(10000);
                conn.setRequestMethod(outMethod);
                // X-Pad before traceparent: an own traceparent after a large header.
                if (pad > 0) {
                    conn.setRequestProperty("X-Pad", new String(pattern(pad), StandardCharsets.US_ASCII));
                }
                if (tp != null && !tp.isEmpty()) {
                    conn.setRequestProperty("traceparent", tp);
                }
                if (outMethod.equals("POST")) {
                    byte[] payload = pattern(intParam(query, "body"));
                    conn.setRequestProperty("Content-Type", "application/octet-stream");
                    conn.setDoOutput(true);
                    conn.setFixedLengthStreamingMode(payload.length);
                    try (OutputStream os = conn.getOutputStream()) {
                        os.write(payload);
                    }
                }
                status = conn.getResponseCode();
                InputStream in = status >= 400 ? conn.getErrorStream() : conn.getInputStream();
                downBody = in == null ? "" : new String(in.readAllBytes(), StandardCharsets.UTF_8);
                if (in != null) {
                    in.close();
                }
            } catch (IOException e) {
                Map<String, Object> err = new LinkedHashMap<>();
                err.put("error", e.toString());
                replyJSON(ex, 502, err);
                return;
            }
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("status", status);
            out.put("body", downBody);
            replyJSON(ex, 200, out);
        } else if (method.equals("GET") && path.equals("/headers")) {
            Map<String, Object> merged = new LinkedHashMap<>();
            List<String> lines = new ArrayList<>();
            for (Map.Entry<String, List<String>> h : ex.getRequestHeaders().entrySet()) {
                String key = h.getKey().toLowerCase();
                for (String v : h.getValue()) {
                    lines.add(key + ": " + v + "\n");
                }
                merged.put(key, String.join(", ", h.getValue()));
            }
            Collections.sort(lines);
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("headers", merged);
            out.put("sha256", sha256(String.join("", lines).getBytes(StandardCharsets.UTF_8)));
            replyJSON(ex, 200, out);
        } else if (method.equals("POST") && path.equals("/echo")) {
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("len", body.length);
            out.put("sha256", sha256(body));
            replyJSON(ex, 200, out);
        } else {
            reply(ex, 404, "not found", "text/plain");
        }
    }

    static String queryParam(String rawQuery, String name) {
        if (rawQuery == null) {
            return null;
        }
        for (String kv : rawQuery.split("&")) {
            int eq = kv.indexOf('=');
            String k = URLDecoder.decode(eq < 0 ? kv : kv.substring(0, eq), StandardCharsets.UTF_8);
            if (k.equals(name)) {
                return eq < 0 ? "" : URLDecoder.decode(kv.substring(eq + 1), StandardCharsets.UTF_8);
            }
        }
        return null;
    }

    static void reply(HttpExchange ex, int code, String body, String contentType) throws IOException {
        byte[] buf = body.getBytes(StandardCharsets.UTF_8);
        Headers h = ex.getResponseHeaders();
        h.set("X-Received-Traceparent", traceparent(ex));
        boolean noBody = code == 204 || code == 304 || buf.length == 0;
        if (code != 204 && code != 304) {
            h.set("Content-Type", contentType);
        }
        // -1: no body (Content-Length: 0); 0 would mean chunked.
        ex.sendResponseHeaders(code, noBody ? -1 : buf.length);
        if (!noBody) {
            try (OutputStream os = ex.getResponseBody()) {
                os.write(buf);
            }
        }
    }

    static void replyJSON(HttpExchange ex, int code, Map<String, Object> obj) throws IOException {
        obj.put("traceparent", traceparent(ex));
        obj.put("traceparent_count", traceparentCount(ex));
        reply(ex, code, toJSON(obj), "application/json");
    }

    static String toJSON(Object v) {
        if (v instanceof Map) {
            StringBuilder sb = new StringBuilder("{");
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                sb.append(quote(e.getKey().toString())).append(':').append(toJSON(e.getValue()));
            }
            return sb.append('}').toString();
        }
        if (v instanceof Number) {
            return v.toString();
        }
        return quote(String.valueOf(v));
    }

    static String quote(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
            }
        }
        return sb.append('"').toString();
    }

    static String sha256(byte[] data) throws NoSuchAlgorithmException {
        byte[] d = MessageDigest.getInstance("SHA-256").digest(data);
        StringBuilder sb = new StringBuilder();
        for (byte b : d) {
            sb.append(String.format("%02x", b));
        }
        return sb.toString();
    }
}
