// Compiled with `tsc --strict --noEmit` against pkg/rtlink.d.ts: the public types must let a
// consumer write this without a cast or an `any`, and must reject the misuse at the bottom.
import init, {
  RealtimeClient,
  RtlinkError,
  type ConnectionState,
  type Message,
  type PresenceMember,
  type TypingUser,
  type Json,
  type PublishResult,
  type TransportName,
  type Unsubscribe,
  type Room,
} from "rtlink";

export async function main(): Promise<void> {
  await init();
  const client = new RealtimeClient({
    url: "https://rt.example.com",
    getToken: async () => "token",
    transports: ["websocket", "sse", "long-polling"],
    backoff: { baseMs: 500, capMs: 30_000, maxAttempts: null },
    heartbeat: { graceMs: 10_000 },
  });
  // Several nodes of one cluster, preferred first.
  new RealtimeClient({ url: ["https://rt-a.example.com", "https://rt-b.example.com"], getToken: () => "t" }).close();
  const off: Unsubscribe = client.on("state", (s: ConnectionState) => {
    const retry: number | null = s.retryInMs;
    const t: TransportName | null = s.transport;
    console.log(s.state, t, s.attempt, retry, s.reason);
  });
  client.on("error", (e: RtlinkError) => console.log(e.code, e.message));
  client.on("transport", (t: TransportName) => console.log(t));
  client.connect();

  const room = client.room("general", { history: 50 });
  const plain: Room = client.room("random");
  plain.leave();
  room.on("message", (m: Message) => {
    const payload: Json = m.payload;
    console.log(m.room, m.offset, m.sender, m.name ?? "anonymous", payload);
  });
  room.on("resync", ({ room }) => console.log("resync", room));
  room.on("error", (e) => console.log(e.code));
  room.presence.set({ name: "Ana", status: "online" });
  room.presence.on("change", (members: PresenceMember[]) => {
    for (const m of members) console.log(m.user, m.name, m.connections, m.meta);
  });
  const members: PresenceMember[] = room.presence.list();
  room.typing.keystroke();
  room.typing.stop();
  room.typing.on("change", (users: TypingUser[]) => console.log(users.map((u) => u.name)));
  try {
    const ack: PublishResult = await room.publish({ text: "hi", n: 1, tags: ["a"], ok: true, none: null });
    console.log(ack.offset, members.length);
  } catch (e) {
    if (e instanceof RtlinkError) {
      const code: RtlinkError["code"] = e.code;
      console.log(code);
    }
  }
  room.leave();
  off();
  client.close();
}

// Misuse the types must reject (each line is an expected error; tsc fails if one compiles).
export function misuse(client: RealtimeClient): void {
  // @ts-expect-error unknown event name
  client.on("nope", () => {});
  // @ts-expect-error state listeners get a ConnectionState, not a string
  client.on("state", (s: string) => console.log(s));
  // @ts-expect-error unknown transport
  new RealtimeClient({ url: "x", getToken: () => "t", transports: ["carrier-pigeon"] });
  // @ts-expect-error getToken is required
  new RealtimeClient({ url: "x" });
  // @ts-expect-error url is a string or a list of strings
  new RealtimeClient({ url: [1, 2], getToken: () => "t" });
  // @ts-expect-error payloads must be JSON values
  void client.room("r").publish(() => 1);
  // @ts-expect-error history is a count of messages
  client.room("r", { history: "all" });
  // @ts-expect-error presence listeners only have "change"
  client.room("r").presence.on("join", () => {});
}
