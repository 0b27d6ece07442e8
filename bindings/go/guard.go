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

// close marks the handle closed and waits for running calls (the owner cancels them first).
// It reports false when the handle was already closed.
func (g *guard) close() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.closed = true
	for g.inflight > 0 {
		g.idle.Wait()
	}
	return true
}
