#!/usr/bin/python3
"""bench_chunk_sink.py - an SMTP sink that offers CHUNKING (RFC 3030), for
tests/bench.sh overlap (smtp-sink does not offer it).

    bench_chunk_sink.py PORT [--no-chunking]

asyncio, standard library only, one task per connection. EHLO offers
PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES and CHUNKING; MAIL, RCPT, RSET,
NOOP get 250, DATA reads up to CRLF.CRLF, BDAT n [LAST] reads exactly n
octets; each completed message (final dot or LAST) is counted, nothing is
kept. Prints "READY" once listening; on SIGTERM prints
"sink messages=N aborted=M" (transactions ended by RSET or a new MAIL
after some chunks) and exits.
"""
import asyncio
import signal
import sys

COUNT = {"messages": 0, "aborted": 0}


async def session(reader, writer, chunking):
    """One connection until QUIT or EOF."""
    caps = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"] + (["CHUNKING"] if chunking else [])
    writer.write(b"220 chunk-sink ESMTP\r\n")
    chunks = 0
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(("250-chunk-sink\r\n" + "".join(
                    "250%s%s\r\n" % ("-" if i + 1 < len(caps) else " ", c)
                    for i, c in enumerate(caps))).encode())
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                await reader.readuntil(b"\r\n.\r\n")
                COUNT["messages"] += 1
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"BDAT" and chunking:
                args = line.split()
                await reader.readexactly(int(args[1]))
                if len(args) > 2 and args[2].upper() == b"LAST":
                    COUNT["messages"] += 1
                    chunks = 0
                    writer.write(b"250 2.0.0 Ok: queued\r\n")
                else:
                    chunks += 1
                    writer.write(b"250 2.0.0 %d octets received\r\n" % int(args[1]))
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                break
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                if verb in (b"MAIL", b"RSET") and chunks:
                    COUNT["aborted"] += 1
                    chunks = 0
                writer.write(b"250 2.0.0 Ok\r\n")
            else:
                writer.write(b"502 5.5.2 Error: command not recognized\r\n")
            if not reader._buffer:  # answer a pipelined group once
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
        pass
    finally:
        writer.close()


async def main(port, chunking):
    server = await asyncio.start_server(lambda r, w: session(r, w, chunking), "127.0.0.1", port,
                                        limit=1 << 20, backlog=1024)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    async with server:
        await stop.wait()
    print("sink messages=%d aborted=%d" % (COUNT["messages"], COUNT["aborted"]), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), "--no-chunking" not in sys.argv[2:]))
