"""A Kubernetes API server for custom objects, over real HTTP on 127.0.0.1: what a client library
(KServe's KServeClient, the kubernetes client under it) sends and reads, with the API server's
rules that matter to a deploy: 404 for a missing object, 409 for an existing name or a stale
resourceVersion, generation bumped on a spec change, status kept across a replace; the core API
only for reading ServiceAccounts (`service_accounts`). A stand-in
"controller" marks an object Ready `ready_after` reads after each change (never, with None).

    with FakeApiServer() as api:
        client = KServeClient(config_dict=api.kubeconfig())
"""
from __future__ import annotations

import copy
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ACCOUNT = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/serviceaccounts/(?P<name>[^/?]+)/?(?:\?.*)?$")
_PATH = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
                   r"(?:/(?P<name>[^/?]+))?/?(?:\?.*)?$")


class FakeApiServer:
    def __init__(self, existing: dict | None = None, conflicts: int = 0, ready_after: int | None = 1,
                 service_accounts: tuple[str, ...] = ("easel-serving/dalle-s3",)):
        self.objects: dict[tuple[str, str], dict] = {}
        self.service_accounts = set(service_accounts)  # "namespace/name" (the core API's only objects here)
        if existing is not None:
            meta = existing["metadata"]
            self.objects[(meta["namespace"], meta["name"])] = copy.deepcopy(existing)
        self.conflicts, self.ready_after, self.reads_since_change = conflicts, ready_after, 0
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(self) -> dict:
        return {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}

    def __enter__(self) -> "FakeApiServer":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ the API's rules
    def _get(self, ns: str, name: str) -> tuple[int, dict]:
        obj = self.objects.get((ns, name))
        if obj is None:
            return 404, _status(404, "NotFound", f'"{name}" not found')
        self.reads_since_change += 1
        if self.ready_after is not None and self.reads_since_change > self.ready_after:
            obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "url": f"http://{name}.example",
                             "conditions": [{"type": "Ready", "status": "True"}]}
        return 200, obj

    def _create(self, ns: str, body: dict) -> tuple[int, dict]:
        name = body["metadata"]["name"]
        if (ns, name) in self.objects:
            return 409, _status(409, "AlreadyExists", f'"{name}" already exists')
        obj = copy.deepcopy(body)
        obj["metadata"].update(generation=1, resourceVersion="1", namespace=ns)
        self.objects[(ns, name)] = obj
        self.reads_since_change = 0
        return 201, obj

    def _replace(self, ns: str, name: str, body: dict) -> tuple[int, dict]:
        current = self.objects.get((ns, name))
        if current is None:
            return 404, _status(404, "NotFound", f'"{name}" not found')
        if self.conflicts or body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            self.conflicts = max(0, self.conflicts - 1)
            current["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
            return 409, _status(409, "Conflict", "the object has been modified; please apply your changes "
                                                 "to the latest version and try again")
        obj = copy.deepcopy(body)
        obj.pop("status", None)  # the main resource ignores status: the status subresource owns it
        changed = obj["spec"] != current["spec"]
        obj["metadata"]["generation"] = current["metadata"]["generation"] + (1 if changed else 0)
        obj["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
        obj["status"] = current.get("status", {})
        self.objects[(ns, name)] = obj
        self.reads_since_change = 0
        return 200, obj

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                account = _ACCOUNT.match(self.path)
                if account and method == "GET":
                    key = f"{account.group('ns')}/{account.group('name')}"
                    server.calls.append((method, key))
                    if key in server.service_accounts:
                        return self._send(200, {"apiVersion": "v1", "kind": "ServiceAccount",
                                                "metadata": {"namespace": account.group("ns"),
                                                             "name": account.group("name")}})
                    return self._send(404, _status(404, "NotFound", f'serviceaccounts "{key}" not found'))
                m = _PATH.match(self.path)
                if not m:
                    return self._send(404, _status(404, "NotFound", f"no route {self.path}"))
                ns, name = m.group("ns"), m.group("name")
                body = None
                if method in ("POST", "PUT"):
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with server._lock:
                    server.calls.append((method, name or body["metadata"]["name"]))
                    if method == "GET" and name:
                        code, out = server._get(ns, name)
                    elif method == "POST" and not name:
                        code, out = server._create(ns, body)
                    elif method == "PUT" and name:
                        code, out = server._replace(ns, name, body)
                    else:
                        code, out = 405, _status(405, "MethodNotAllowed", method)
                    out = copy.deepcopy(out)
                self._send(code, out)

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_PUT(self):
                self._serve("PUT")

            def log_message(self, *args):  # quiet
                pass

        return Handler


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
            "code": code}
