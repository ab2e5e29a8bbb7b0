"""A gRPC server and client from grpcio (a gRPC implementation weir did not write), for the lab
test of weir's HTTP/2 and gRPC observation. No generated code: the methods take and return raw
bytes.

  grpc_lab.py serve PORT PIDFILE   serve weir.lab.Cart on PORT, in the background (bounded to
                                   120 s); returns once it is serving, its pid in PIDFILE
  grpc_lab.py call HOST:PORT       Cart/Get (answers OK) then Cart/Remove (answers NOT_FOUND,
                                   "no such cart") on one connection; prints both status names
  grpc_lab.py status SOCKET        Hubble's ServerStatus over a unix socket, as a non-Go gRPC
                                   client calls it; prints the answer's size in bytes
  grpc_lab.py newer-filter SOCKET  GetFlows with a whitelist filter carrying a field of no
                                   Hubble release weir knows (field 41, as a client newer than
                                   Hubble 1.19 could send it); prints the status code's name
"""
import os
import sys


def serve(port, pidfile):
    ready_r, ready_w = os.pipe()
    if os.fork() > 0:
        os.close(ready_w)
        ok = os.read(ready_r, 1)
        sys.exit(0 if ok == b"1" else 1)
    os.close(ready_r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    # grpc is imported only in the server process, after the fork.
    from concurrent import futures

    import grpc

    def get(request, context):
        return b"cart:" + request

    def remove(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such cart")

    handler = grpc.method_handlers_generic_handler(
        "weir.lab.Cart",
        {
            "Get": grpc.unary_unary_rpc_method_handler(get),
            "Remove": grpc.unary_unary_rpc_method_handler(remove),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    os.write(ready_w, b"1")
    os.close(ready_w)
    server.wait_for_termination(timeout=120)


def call(target):
    import grpc

    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    print("Get", "OK" if channel.unary_unary("/weir.lab.Cart/Get")(b"1", timeout=5) == b"cart:1" else "WRONG")
    try:
        channel.unary_unary("/weir.lab.Cart/Remove")(b"1", timeout=5)
        print("Remove", "OK")
    except grpc.RpcError as e:
        print("Remove", e.code().name)
    channel.close()


def status(socket):
    import grpc

    channel = grpc.insecure_channel("unix://" + socket)
    answer = channel.unary_unary("/observer.Observer/ServerStatus")(b"", timeout=5)
    print(len(answer))
    channel.close()


def newer_filter(socket):
    import grpc

    # FlowFilter { source_pod: ["shop/"] (field 2), field 41: varint 133 }, the request's
    # whitelist (field 6); number (field 1) = 5. Raw bytes: no generated code.
    flow_filter = bytes([2 << 3 | 2, 5]) + b"shop/" + bytes([0xC8, 0x02, 0x85, 0x01])
    request = bytes([1 << 3, 5, 6 << 3 | 2, len(flow_filter)]) + flow_filter
    channel = grpc.insecure_channel("unix://" + socket)
    try:
        for _ in channel.unary_stream("/observer.Observer/GetFlows")(request, timeout=5):
            pass
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name, e.details())
    channel.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "status":
        status(sys.argv[2])
    elif sys.argv[1] == "newer-filter":
        newer_filter(sys.argv[2])
    else:
        call(sys.argv[2])
