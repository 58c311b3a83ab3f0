"""Where a keel node's CPU goes, from `perf script` output of a `perf record -g` run.

    python3 scripts/profile-report.py NODE.perf.txt [OUT.folded]

Each sample is charged to the first area (in the order of AREAS) that appears anywhere on its
stack, so the shares add up to 100 %: a RocksDB write made by apply counts as "RocksDB write",
not as "state machine". Also prints the hottest leaf functions, and writes the stacks in the
folded format that flame graph tools (inferno, speedscope, flamegraph.pl) read. Standard
library only.
"""
import collections
import re
import sys

# (area, substrings of a frame that put a sample there), most specific first.
AREAS = [
    ("fsync", ["fdatasync", "do_fsync", "rocksdb::DBImpl::FlushWAL"]),
    ("RocksDB flush + compaction", ["FlushJob", "CompactionJob", "BGWorkCompaction", "BGWorkFlush"]),
    ("RocksDB write (WAL + memtable)", ["rocksdb::DBImpl::WriteImpl"]),
    ("RocksDB read", ["rocksdb::DBImpl::Get", "rocksdb::DBIter", "rocksdb::DBImpl::MultiGet"]),
    ("state machine apply", ["apply_blocking", "keel_storage::state_store"]),
    ("peer RPC client (replication, forwards)", ["reqwest::", "keel_raft::network"]),
    ("Raft core (openraft)", ["openraft::"]),
    ("JSON", ["serde_json::"]),
    ("HTTP (server, handlers, peer connections)", ["hyper::", "axum::", "keel::api"]),
    ("tokio scheduler + timers", ["tokio::runtime", "tokio::time"]),
]
OTHER = "other"


def without_generics(name):
    """`poll<keel_storage::StateStore<..>>` becomes `poll`, so an area matches the function
    itself rather than a type it is generic over; a leading `<X as Trait>` qualifier stays."""
    out, depth = [], 0
    for i, char in enumerate(name):
        if char == "<" and (depth or (i and (name[i - 1].isalnum() or name[i - 1] in "_}"))):
            depth += 1
        elif char == ">" and depth:
            depth -= 1
        elif not depth:
            out.append(char)
    return "".join(out)


def frame_name(line):
    """The symbol of one `perf script` stack line, without address, offset and generics."""
    parts = line.strip().split(" ", 1)
    name = parts[1] if len(parts) > 1 else parts[0]
    name = re.sub(r"\+0x[0-9a-f]+", "", name)
    return without_generics(re.sub(r"\s+\([^)]*\)$", "", name))


def samples(path):
    """Yields each sample's stack, leaf first."""
    frames = []
    with open(path, errors="replace") as lines:
        for line in lines:
            if not line.strip():
                if frames:
                    yield frames
                frames = []
            elif line[0] in " \t":
                frames.append(frame_name(line))
            else:
                frames = []
    if frames:
        yield frames


def area(stack):
    for name, markers in AREAS:
        if any(marker in frame for frame in stack for marker in markers):
            return name
    return OTHER


def main():
    path = sys.argv[1]
    folded_path = sys.argv[2] if len(sys.argv) > 2 else None
    areas, leaves, folded = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for stack in samples(path):
        total += 1
        areas[area(stack)] += 1
        leaves[stack[0][:100]] += 1
        folded[";".join(reversed([f.replace(";", ":") for f in stack]))] += 1
    if total == 0:
        sys.exit(f"{path}: no samples")
    print(f"{total} samples")
    for name, _ in AREAS + [(OTHER, [])]:
        print(f"  {100 * areas[name] / total:5.1f} %  {name}")
    print("  hottest leaf functions:")
    for name, count in leaves.most_common(12):
        print(f"  {100 * count / total:5.1f} %  {name}")
    if folded_path:
        with open(folded_path, "w") as out:
            for stack, count in folded.items():
                out.write(f"{stack} {count}\n")


if __name__ == "__main__":
    main()
