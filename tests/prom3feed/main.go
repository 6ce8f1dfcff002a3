// Command prom3feed feeds a real Prometheus 3.x server so that it writes a TSDB with the
// features of today's servers; Prometheus writes every byte, this program only offers data.
// scripts/gen-tsdb3.sh runs it next to a Prometheus started with exemplar storage, metadata
// WAL records, created/start timestamps (st-storage), an out-of-order window and the memory
// snapshot on shutdown.
//
// Two feeds:
//   - /metrics on -listen, scraped every second in the PrometheusProto format: a counter and a
//     native histogram with exemplars and created timestamps (client_golang), a gauge, and
//     feed_huge_histogram, a native histogram of -buckets buckets (tens of thousands) whose
//     every bucket grows by a random amount each second, so that each sample takes about
//     4 bytes a bucket in a chunk and its chunks (cut at 10 samples) are 1-2 MB;
//   - remote write 2.0 to -remote-write once a second: in-order series with start timestamps
//     (a counter, an integer and a float native histogram: XOR2, histogramST and
//     floathistogramST chunks) and out-of-order series (a float, an integer and a float
//     histogram): each second one sample at the current time and -ooo-per-second at random
//     earlier times up to -ooo-span back, so that Prometheus writes them to the WBL and
//     out-of-order head chunks and compacts them into out-of-order blocks.
//
// It runs until SIGTERM/SIGINT or -duration. Every random choice comes from -seed.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/golang/snappy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	writev2 "github.com/prometheus/prometheus/prompb/io/prometheus/write/v2"
)

func main() {
	listen := flag.String("listen", "", "address for /metrics, e.g. 127.0.0.1:9099 (required)")
	rwURL := flag.String("remote-write", "", "Prometheus remote-write URL, e.g. http://127.0.0.1:9090/api/v1/write (required)")
	buckets := flag.Int("buckets", 36000, "positive buckets of feed_huge_histogram")
	increment := flag.Int64("increment", 1<<21, "each bucket of feed_huge_histogram grows by up to this much a second")
	oooSpan := flag.Duration("ooo-span", 3*time.Minute, "out-of-order samples go back up to this far")
	oooPerTick := flag.Int("ooo-per-second", 8, "out-of-order samples per series sent each second")
	duration := flag.Duration("duration", 10*time.Minute, "stop after this long")
	seed := flag.Int64("seed", 14, "random seed")
	flag.Parse()
	if *listen == "" || *rwURL == "" || *buckets < 3 || *increment < 1 || *oooSpan <= 10*time.Second || *oooPerTick < 1 {
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *duration)
	defer cancel()

	rng := rand.New(rand.NewSource(*seed))
	start := time.Now()
	f := newFeed(rng, start, *buckets, *increment)

	reg := prometheus.NewRegistry()
	reg.MustRegister(f.requests, f.latency, f.temperature, f.huge)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("prom3feed: listen on %s: %v", *listen, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			log.Fatalf("prom3feed: serve /metrics: %v", err)
		}
	}()
	log.Printf("prom3feed: /metrics on %s, remote write to %s, %d buckets in feed_huge_histogram", ln.Addr(), *rwURL, *buckets)

	w := newWriter(rng, *rwURL, start, *oooSpan, *oooPerTick)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		now := time.Now()
		f.step(now)
		if err := w.send(ctx, now); err != nil {
			log.Printf("prom3feed: remote write: %v", err)
		}
		select {
		case <-ctx.Done():
			shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
			_ = srv.Shutdown(shutdown)
			done()
			log.Printf("prom3feed: stopped after %s; %d out-of-order samples sent per series", time.Since(start).Round(time.Second), w.oooSent)
			return
		case <-tick.C:
		}
	}
}

// ---------------------------------------------------------------------------------------
// scraped metrics

type feed struct {
	mu          sync.Mutex
	rng         *rand.Rand
	requests    *prometheus.CounterVec
	latency     prometheus.Histogram
	temperature prometheus.Gauge
	huge        *hugeHistogram
}

func newFeed(rng *rand.Rand, start time.Time, buckets int, increment int64) *feed {
	return &feed{
		rng: rng,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "feed_requests_total",
			Help: "Requests handled (with exemplars).",
		}, []string{"code"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:                            "feed_request_duration_seconds",
			Help:                            "Request latency: a native histogram with exemplars.",
			Buckets:                         []float64{0.01, 0.1, 1},
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  200,
			NativeHistogramMinResetDuration: time.Hour,
			NativeHistogramMaxExemplars:     20,
			NativeHistogramExemplarTTL:      time.Minute,
		}),
		temperature: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "feed_temperature_celsius",
			Help: "A gauge.",
		}),
		huge: newHugeHistogram(rng, start, buckets, increment),
	}
}

// step changes every scraped metric once (called once a second).
func (f *feed) step(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := 0; i < 50; i++ {
		v := math.Exp(f.rng.NormFloat64()*1.5 - 3)
		trace := prometheus.Labels{"trace_id": fmt.Sprintf("%016x", f.rng.Uint64())}
		f.latency.(prometheus.ExemplarObserver).ObserveWithExemplar(v, trace)
		code := []string{"200", "200", "200", "404", "500"}[f.rng.Intn(5)]
		f.requests.WithLabelValues(code).(prometheus.ExemplarAdder).AddWithExemplar(1, trace)
	}
	f.temperature.Set(20 + 5*math.Sin(float64(now.Unix())/60))
	f.huge.grow(now)
}

// hugeHistogram is a native histogram (schema 8) with a fixed layout of tens of thousands of
// buckets: three positive spans and a few negative buckets. Each second every bucket grows by
// a random amount below `increment`, so that the chunk encoding needs a 4-byte varbit per
// bucket and sample, and carries an exemplar.
type hugeHistogram struct {
	desc      *prometheus.Desc
	rng       *rand.Rand
	mu        sync.Mutex
	created   time.Time
	increment int64
	pos, neg  map[int]int64
	zero      uint64
	sum       float64
	exemplar  prometheus.Exemplar
}

func newHugeHistogram(rng *rand.Rand, created time.Time, buckets int, increment int64) *hugeHistogram {
	h := &hugeHistogram{
		desc: prometheus.NewDesc("feed_huge_histogram",
			"A native histogram with tens of thousands of buckets (chunks of megabytes).", nil, nil),
		rng:       rng,
		created:   created,
		increment: increment,
		pos:       make(map[int]int64, buckets),
		neg:       make(map[int]int64, 64),
	}
	// Three spans: gaps of 7 and 13 buckets between them.
	idx := -buckets / 2
	for i := 0; i < buckets; i++ {
		if i == buckets/3 {
			idx += 7
		} else if i == 2*buckets/3 {
			idx += 13
		}
		h.pos[idx] = 0
		idx++
	}
	for i := 0; i < 64; i++ {
		h.neg[i*2] = 0
	}
	return h
}

func (h *hugeHistogram) grow(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k := range h.pos {
		h.pos[k] += h.rng.Int63n(h.increment)
	}
	for k := range h.neg {
		h.neg[k] += h.rng.Int63n(1000)
	}
	h.zero += uint64(h.rng.Intn(100))
	h.sum += h.rng.Float64() * 1e6
	h.exemplar = prometheus.Exemplar{
		Value:     math.Exp2(h.rng.Float64()*40 - 20),
		Labels:    prometheus.Labels{"trace_id": fmt.Sprintf("%016x", h.rng.Uint64())},
		Timestamp: now,
	}
}

func (h *hugeHistogram) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

func (h *hugeHistogram) Collect(ch chan<- prometheus.Metric) {
	h.mu.Lock()
	defer h.mu.Unlock()
	count := h.zero
	for _, c := range h.pos {
		count += uint64(c)
	}
	for _, c := range h.neg {
		count += uint64(c)
	}
	m, err := prometheus.NewConstNativeHistogram(h.desc, count, h.sum, h.pos, h.neg, h.zero, 8, 1e-30, h.created)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(h.desc, err)
		return
	}
	if h.exemplar.Labels != nil {
		m = prometheus.MustNewMetricWithExemplars(m, h.exemplar)
	}
	ch <- m
}

// ---------------------------------------------------------------------------------------
// remote write 2.0

type writer struct {
	rng     *rand.Rand
	url     string
	client  *http.Client
	start   time.Time
	perTick int
	span    int64
	// Timestamps (ms) each out-of-order series has had.
	sent    [3]map[int64]bool
	oooSent int

	// In-order state with start timestamps.
	events float64
	hist   histogram.Histogram
	fhist  histogram.FloatHistogram
}

func newWriter(rng *rand.Rand, url string, start time.Time, span time.Duration, perTick int) *writer {
	w := &writer{
		rng: rng, url: url, start: start, perTick: perTick, span: span.Milliseconds(),
		client: &http.Client{Timeout: 10 * time.Second},
		hist: histogram.Histogram{
			Schema:          3,
			ZeroThreshold:   1e-9,
			PositiveSpans:   []histogram.Span{{Offset: -10, Length: 40}},
			PositiveBuckets: make([]int64, 40),
		},
		fhist: histogram.FloatHistogram{
			Schema:          2,
			ZeroThreshold:   1e-9,
			PositiveSpans:   []histogram.Span{{Offset: -5, Length: 20}},
			PositiveBuckets: make([]float64, 20),
		},
	}
	for s := range w.sent {
		w.sent[s] = make(map[int64]bool)
	}
	return w
}

// oooTimes gives series s its sample at t (in order: its newest) and perTick timestamps
// between t-span and t-5s that it never had (out of order).
func (w *writer) oooTimes(s int, t int64) []int64 {
	out := []int64{t}
	w.sent[s][t] = true
	for len(out) <= w.perTick {
		ts := t - 5000 - w.rng.Int63n(w.span-5000)
		if !w.sent[s][ts] {
			w.sent[s][ts] = true
			out = append(out, ts)
		}
	}
	return out
}

// intHist is a small integer native histogram for the out-of-order series.
func intHist(rng *rand.Rand) *histogram.Histogram {
	b := make([]int64, 8)
	var prev, cnt int64
	for i := range b {
		c := rng.Int63n(100)
		b[i] = c - prev
		prev = c
		cnt += c
	}
	return &histogram.Histogram{
		CounterResetHint: histogram.GaugeType,
		Schema:           1, ZeroThreshold: 1e-9, Count: uint64(cnt), Sum: float64(cnt) * 0.5,
		PositiveSpans: []histogram.Span{{Offset: 0, Length: 8}}, PositiveBuckets: b,
	}
}

func floatHist(rng *rand.Rand) *histogram.FloatHistogram {
	b := make([]float64, 6)
	var cnt float64
	for i := range b {
		b[i] = math.Round(rng.Float64()*1000) / 10
		cnt += b[i]
	}
	return &histogram.FloatHistogram{
		CounterResetHint: histogram.GaugeType,
		Schema:           0, ZeroThreshold: 1e-9, Count: cnt, Sum: cnt * 0.25,
		PositiveSpans: []histogram.Span{{Offset: 1, Length: 6}}, PositiveBuckets: b,
	}
}

func (w *writer) send(ctx context.Context, now time.Time) error {
	t := now.UnixMilli()
	st := w.start.UnixMilli()
	syms := writev2.NewSymbolTable()
	series := func(name, help, unit string, typ writev2.Metadata_MetricType, extra ...string) writev2.TimeSeries {
		ls := labels.FromStrings(append([]string{"__name__", name, "job", "feed-rw"}, extra...)...)
		return writev2.TimeSeries{
			LabelsRefs: syms.SymbolizeLabels(ls, nil),
			Metadata: writev2.Metadata{
				Type: typ, HelpRef: syms.Symbolize(help), UnitRef: syms.Symbolize(unit),
			},
		}
	}

	// In order, with start timestamps.
	w.events += float64(1 + w.rng.Intn(20))
	ev := series("feed_rw_events_total", "Remote-written counter with a start timestamp.", "", writev2.Metadata_METRIC_TYPE_COUNTER)
	ev.Samples = []writev2.Sample{{Value: w.events, Timestamp: t, StartTimestamp: st}}
	ev.Exemplars = []writev2.Exemplar{{
		LabelsRefs: syms.SymbolizeLabels(labels.FromStrings("trace_id", fmt.Sprintf("%016x", w.rng.Uint64())), nil),
		Value:      1, Timestamp: t,
	}}

	// Every bucket count grows (no counter reset); the chunk stores deltas between buckets.
	var cnt, run int64
	abs := make([]int64, len(w.hist.PositiveBuckets))
	for i, d := range w.hist.PositiveBuckets {
		run += d
		abs[i] = run + w.rng.Int63n(5)
		cnt += abs[i]
	}
	var prev int64
	for i := range abs {
		w.hist.PositiveBuckets[i] = abs[i] - prev
		prev = abs[i]
	}
	w.hist.Count = uint64(cnt)
	w.hist.Sum += float64(w.rng.Intn(1000))
	hs := series("feed_rw_duration_seconds", "Remote-written integer native histogram with a start timestamp.", "seconds", writev2.Metadata_METRIC_TYPE_HISTOGRAM)
	hs.Histograms = []writev2.Histogram{writev2.FromIntHistogram(st, t, &w.hist)}

	var fcnt float64
	for i := range w.fhist.PositiveBuckets {
		w.fhist.PositiveBuckets[i] += math.Round(w.rng.Float64()*100) / 4
		fcnt += w.fhist.PositiveBuckets[i]
	}
	w.fhist.Count = fcnt
	w.fhist.Sum += fcnt / 10
	fs := series("feed_rw_ratio", "Remote-written float native histogram with a start timestamp.", "ratio", writev2.Metadata_METRIC_TYPE_HISTOGRAM)
	fs.Histograms = []writev2.Histogram{writev2.FromFloatHistogram(st, t, &w.fhist)}

	// Out of order: each series gets its newest sample in order and older ones after it.
	of := series("feed_ooo_value", "Out-of-order float samples.", "", writev2.Metadata_METRIC_TYPE_GAUGE)
	oh := series("feed_ooo_histogram", "Out-of-order integer native histograms.", "", writev2.Metadata_METRIC_TYPE_GAUGEHISTOGRAM)
	ofh := series("feed_ooo_float_histogram", "Out-of-order float native histograms.", "", writev2.Metadata_METRIC_TYPE_GAUGEHISTOGRAM)
	for _, ts := range w.oooTimes(0, t) {
		of.Samples = append(of.Samples, writev2.Sample{Value: float64(ts%100000) / 7, Timestamp: ts})
	}
	for _, ts := range w.oooTimes(1, t) {
		oh.Histograms = append(oh.Histograms, writev2.FromIntHistogram(0, ts, intHist(w.rng)))
	}
	for _, ts := range w.oooTimes(2, t) {
		ofh.Histograms = append(ofh.Histograms, writev2.FromFloatHistogram(0, ts, floatHist(w.rng)))
	}
	w.oooSent += w.perTick

	req := writev2.Request{Timeseries: []writev2.TimeSeries{ev, hs, fs, of, oh, ofh}}
	req.Symbols = syms.Symbols()
	return w.post(ctx, &req)
}

func (w *writer) post(ctx context.Context, req *writev2.Request) error {
	raw, err := req.Marshal()
	if err != nil {
		return err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(snappy.Encode(nil, raw)))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Encoding", "snappy")
	hr.Header.Set("Content-Type", "application/x-protobuf;proto=io.prometheus.write.v2.Request")
	hr.Header.Set("X-Prometheus-Remote-Write-Version", "2.0.0")
	resp, err := w.client.Do(hr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	return nil
}
