package maze

import "sync"

// guard lets any number of calls use a C handle at once while Close waits for them, so a handle
// is never freed under a running call, and a call after Close fails with ErrClosed instead of
// touching freed memory.
type guard struct {
	mu       sync.Mutex
	idle     *sync.Cond
	inflight int
	closed   bool
}

func newGuard() *guard {
	g := &guard{}
	g.idle = sync.NewCond(&g.mu)
	return g
}

func (g *guard) enter() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	g.inflight++
	return nil
}

func (g *guard) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inflight--
	if g.inflight == 0 {
		g.idle.Broadcast()
	}
}

// close marks the handle closed and waits for running calls. While it waits it runs interrupt
// (non-blocking) every few milliseconds: a call that had entered but not yet reached the
// library when Close began would miss a single interrupt. It reports false when the handle was
// already closed.
func (g *guard) close(interrupt func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.closed = true
	if g.inflight == 0 {
		return true
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	if interrupt != nil {
		go func() {
			defer close(stopped)
			repeatUntil(stop, interrupt)
		}()
	} else {
		close(stopped)
	}
	for g.inflight > 0 {
		g.idle.Wait()
	}
	close(stop)
	<-stopped
	return true
}
