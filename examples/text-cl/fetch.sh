#!/usr/bin/env bash
# The two text domains, from Debian's archive (apt-get download: no root install, no network
# beyond the archive): A = the fortune cookie files of `fortunes` and `fortunes-min`
# (quotations, jokes, literature; /usr/share/games/fortunes, one file per category), B = the
# reStructuredText sources of the Python 3.11 documentation in `python3.11-doc`
# (html/_sources/**/*.rst.txt). Writes DIR/fortunes/*.txt and DIR/pydocs/*.txt, one document
# per file, and DIR/SOURCES with the package versions and sha256 of the .deb files.
#   bash examples/text-cl/fetch.sh data/text-cl
set -euo pipefail
dir=${1:-data/text-cl}
mkdir -p "$dir/debs" "$dir/fortunes" "$dir/pydocs"
dir=$(cd "$dir" && pwd)
cd "$dir/debs"
if ! ls fortunes_*.deb fortunes-min_*.deb python3.11-doc_*.deb >/dev/null 2>&1; then
  apt-get download fortunes fortunes-min python3.11-doc >&2
fi
rm -rf x && mkdir x
for f in fortunes_*.deb fortunes-min_*.deb python3.11-doc_*.deb; do dpkg-deb -x "$f" x; done
# The fortune files (not their .dat indexes); their '%' separators are kept as text.
for f in x/usr/share/games/fortunes/*; do
  case "$f" in *.dat|*.u8) continue ;; esac
  [ -f "$f" ] && [ ! -L "$f" ] && cp "$f" "$dir/fortunes/$(basename "$f").txt"
done
src=x/usr/share/doc/python3.11/html/_sources
find "$src" -name '*.rst.txt' | LC_ALL=C sort | while read -r f; do
  rel=${f#"$src/"}
  cp "$f" "$dir/pydocs/$(echo "$rel" | tr / _)"
done
rm -rf x
{
  for f in *.deb; do echo "$(sha256sum "$f")"; done
  echo "fortunes: $(ls "$dir/fortunes" | wc -l) files, $(cat "$dir"/fortunes/* | wc -c) bytes"
  echo "pydocs: $(ls "$dir/pydocs" | wc -l) files, $(cat "$dir"/pydocs/* | wc -c) bytes"
} > "$dir/SOURCES"
cat "$dir/SOURCES" >&2
