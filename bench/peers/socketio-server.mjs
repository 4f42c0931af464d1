// The Socket.IO 4.8 peer of the side-by-side benchmarks (docs/BENCHMARKS.md), started by
// `rtlink-bench` on 127.0.0.1:PORT. Websocket transport only, the library's defaults otherwise.
//
//   "join" (room)           the socket joins the room, answered by "joined" (room)
//   "pub"  (room, payload)  io.to(room).emit("msg", payload): the fan-out under test
//
// SIGTERM exits at once, as a Node process does by default: Socket.IO has no drain, and its
// clients reconnect with their default backoff (the reconnect storm compares exactly that).
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? 3000);
const http = createServer();
const io = new Server(http, {
  transports: ["websocket"],
  cors: { origin: "*" },
});

io.on("connection", (socket) => {
  socket.on("join", (room) => {
    socket.join(String(room));
    socket.emit("joined", room);
  });
  socket.on("pub", (room, payload) => {
    io.to(String(room)).emit("msg", payload);
  });
});

http.listen(port, "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
