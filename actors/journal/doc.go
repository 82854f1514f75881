// Package journal is derpd's recording of what its actors did: every
// message an actor's mailbox handed it and every packet a reader routed,
// in the order they were recorded, so that a replay can feed the same
// inputs to fresh actors (actors/replay) and a synthesizer can write
// workloads nobody recorded (derpd synth).
//
// # File format, version 1
//
// All integers are little-endian; uvarint and varint are encoding/binary's.
//
//	header:  "DERPDJNL" (8 bytes)  u8 version (1)  u8 flags (bit 0: payloads recorded)
//	         i64 start (unix nanoseconds)
//	records: uvarint n = len(body)  body (n bytes)  u32 CRC-32C (Castagnoli) of body
//
// A reader refuses n > MaxRecordBytes before reading the body, so a
// corrupt length can never make it allocate more than that.
//
//	body:    u8 Kind  uvarint Seq  uvarint At (ns since start)
//	         u8 target kind (index into actors.ActorKinds; 0xff: none)
//	         uvarint target id  uvarint MsgType  then the kind's own encoding
//
// KindMessage is followed by the message's encoding (codec.go: one
// function per MsgType, documented there); TypeOpaque, for a message the
// codec does not know, by its Go type name. KindPacket is followed by the
// PacketRecord: uvarint SrcConn, u8 flags (bit 0 disco, bit 1 forwarded,
// bit 2 payload follows, bit 3 same source), Src (32 bytes, left out when
// bit 3 says it is the source of the connection's previous packet
// record: a client's packets all carry its own key), Dst (32 bytes),
// uvarint Size, and when bit 2 is set exactly Size payload bytes. A
// buffer's records reach the file in order, so the previous one is always
// before. KindNote is followed
// by its text (uvarint length, bytes). KindEnd, written by Writer.Close,
// ends a complete journal: a journal that stops at a record boundary
// without one was cut short (the recorder was killed, or the file was
// truncated), and the Reader says so with ErrUnterminated, naming the
// offset, after handing over every record before it.
//
// Inside a message, a connection (*actors.Conn) is written as its id
// alone, except in actors.Register, which carries the connection's fixed
// fields. The Reader resolves ids through its ConnTable, so every record
// naming connection 7 decodes to the same *actors.Conn.
//
// Every error the Reader returns for bad input names the byte offset of
// the record (or header) at fault: "journal: offset 1234: ...".
package journal
