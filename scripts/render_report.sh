#!/usr/bin/env bash
# Render an HTML report (`oefray report EXPERIMENT --out report.html`) to a PNG with headless
# Chromium, as a browser shows it.
#
#   scripts/render_report.sh REPORT.html OUT.png [--width 1280] [--height H] [--dom DOM.html]
#
# Two passes over the page, each with a new empty Chromium profile and no network use:
#   1. a copy of the report with a small probe script is loaded and its DOM dumped: once the page
#      has loaded, the probe sets on <body> data-images-ok="<decoded>/<all images>" (an image
#      counts when the browser decoded it, naturalWidth > 0) and data-page-height; --dom keeps
#      that DOM (the report itself is not changed);
#   2. a screenshot of the whole page (height from pass 1, at most 16000 px; --height overrides).
# It prints "images <decoded>/<all>" and exits 1 if an image failed to decode.
#
# Chromium: Debian's package (`apt-get install -y chromium`), or $CHROMIUM. The flags below keep it
# headless, offline and stateless (needed on machines with a closed network and no GPU).
set -euo pipefail

usage() { echo "usage: $0 REPORT.html OUT.png [--width W] [--height H] [--dom DOM.html]" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
report=$1 out=$2
shift 2
width=1280 height="" dom=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --width) width=$2; shift 2 ;;
        --height) height=$2; shift 2 ;;
        --dom) dom=$2; shift 2 ;;
        *) usage ;;
    esac
done
[[ -f $report ]] || { echo "render_report: no such file: $report" >&2; exit 2; }
chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[[ -n $chromium ]] || { echo "render_report: chromium not found; install it: apt-get install -y chromium" >&2; exit 127; }

work=$(mktemp -d "${TMPDIR:-/tmp}/oefray-render.XXXXXX")
trap 'rm -rf "$work"' EXIT
report_abs=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")
probe=$work/probe.html  # the report is self-contained: a copy elsewhere renders the same

browse() {  # browse PROFILE_NAME ARGS... : one headless Chromium run with a fresh profile
    local name=$1
    shift
    mkdir "$work/$name"
    timeout 180 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --disable-dev-shm-usage --hide-scrollbars --user-data-dir="$work/$name" "$@" \
        2>>"$work/chromium.log" || {
        echo "render_report: chromium failed (exit $?):" >&2
        tail -20 "$work/chromium.log" >&2
        exit 1
    }
}

script='<script>window.addEventListener("load",function(){var a=Array.from(document.images);'
script+='var ok=a.filter(function(i){return i.complete&&i.naturalWidth>0}).length;'
script+='document.body.setAttribute("data-images-ok",ok+"/"+a.length);'
script+='document.body.setAttribute("data-page-height",String(document.documentElement.scrollHeight));});</script>'
# the probe goes at the end of the copy: HTML parsers put trailing content into <body>
{ cat "$report_abs"; printf '%s\n' "$script"; } >"$probe"

browse dom --window-size="$width,1000" --dump-dom "file://$probe" >"$work/dom.html"
images=$(grep -o 'data-images-ok="[0-9]*/[0-9]*"' "$work/dom.html" | head -1 | cut -d'"' -f2 || true)
page_height=$(grep -o 'data-page-height="[0-9]*"' "$work/dom.html" | head -1 | cut -d'"' -f2 || true)
[[ -n $images ]] || { echo "render_report: the page did not finish loading" >&2; exit 1; }
[[ -n $dom ]] && cp "$work/dom.html" "$dom"

if [[ -z $height ]]; then
    height=$(( page_height > 16000 ? 16000 : (page_height < 600 ? 600 : page_height) ))
fi
mkdir -p "$(dirname "$out")"
out_abs=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
browse shot --window-size="$width,$height" --screenshot="$out_abs" "file://$report_abs" >/dev/null
[[ -s $out_abs ]] || { echo "render_report: no screenshot written" >&2; exit 1; }
echo "images $images; ${width}x${height} px -> $out"
[[ ${images%/*} == "${images#*/}" ]] || { echo "render_report: images that did not decode: $images" >&2; exit 1; }
