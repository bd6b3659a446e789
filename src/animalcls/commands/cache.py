"""`animalcls cache list|clean`: the decode caches in a cache dir, and taking their space back.

    animalcls cache list [data.cache_dir=data/.cache]
    animalcls cache clean [data.cache_dir=data/.cache] [all=true]

`list` prints one line per cache: its key, state (complete; partial: a stopped build that the next
run resumes; building: a job holds its lock now; old-format: a version-1 `.pt` cache, no longer
read; leftover: a temp file or a sidecar without its images), images decoded, side, size on disk
and age. `clean` removes old-format caches, partial builds and leftovers (never a build in
progress); `all=true` also removes complete caches (the next run decodes again). A cache's key
changes whenever its data set's files or the decode size change, so caches of data sets that were
edited, moved or re-cropped stay behind until cleaned.
"""

from __future__ import annotations

import time

from animalcls.data.cache import CacheEntry, cache_entries, clean_caches
from animalcls.errors import AnimalclsError

USAGE = "animalcls cache list|clean [data.cache_dir=data/.cache] [all=true]"


def _options(args: list[str]) -> dict[str, str]:
    options = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("data.cache_dir", "all"):
            raise AnimalclsError(f"unexpected argument {arg!r}; usage: {USAGE}")
        options[key] = value.strip().strip("'\"")
    if options.get("all", "false").lower() not in ("true", "false"):
        raise AnimalclsError(f"all= takes true or false, not {options['all']!r}; usage: {USAGE}")
    return options


def _line(entry: CacheEntry, now: float) -> str:
    days = (now - entry.modified) / 86400
    count = f"{entry.done}/{entry.images}" if entry.state in ("partial", "building") else str(entry.images or "?")
    side = f"{entry.side}px" if entry.side else "?"
    size = f"{entry.bytes / 1e9:8.3f} GB"
    return f"{entry.key:16s}  {entry.state:10s}  {count:>13s} images  {side:>6s}  {size}  {days:6.1f} days"


def main(args: list[str]) -> int:
    if not args or args[0] not in ("list", "clean"):
        raise AnimalclsError(f"say what to do with the decode caches; usage: {USAGE}")
    options = _options(args[1:])
    cache_dir = options.get("data.cache_dir", "data/.cache")
    now = time.time()
    if args[0] == "list":
        entries = cache_entries(cache_dir)
        for entry in entries:
            print(_line(entry, now))
        total = sum(e.bytes for e in entries)
        print(f"{len(entries)} cache(s) in {cache_dir}, {total / 1e9:.3f} GB")
        return 0
    removed = clean_caches(cache_dir, everything=options.get("all", "false").lower() == "true")
    for entry in removed:
        print(f"removed {_line(entry, now)}")
    print(f"removed {len(removed)} cache(s) from {cache_dir}, {sum(e.bytes for e in removed) / 1e9:.3f} GB freed")
    return 0
