package statestream

import (
	"sync"
	"time"
)

// replyClock decides when a pipelined stream's reply is overdue: timeout after the oldest unanswered step was
// sent (or after the last reply, while steps are unanswered), not counting the caller's time with a result
// (suspend/resume); as the Python client's ReplyDeadline. It calls onOverdue once.
type replyClock struct {
	mu          sync.Mutex
	timeout     time.Duration
	onOverdue   func()
	outstanding int
	suspended   bool
	fired       bool
	timer       *time.Timer
}

func newReplyClock(timeout time.Duration, onOverdue func()) *replyClock {
	return &replyClock{timeout: timeout, onOverdue: onOverdue}
}

func (c *replyClock) sent() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.outstanding++
	if c.outstanding == 1 && !c.suspended {
		c.rearm()
	}
}

func (c *replyClock) received() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.outstanding = max(0, c.outstanding-1)
	c.rearm()
}

func (c *replyClock) suspend() { c.set(true) }
func (c *replyClock) resume()  { c.set(false) }

func (c *replyClock) set(suspended bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.suspended = suspended
	c.rearm()
}

// rearm (with mu held) restarts the timer while steps are unanswered and the caller is not holding a result.
func (c *replyClock) rearm() {
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if c.outstanding > 0 && !c.suspended && c.timeout > 0 {
		c.timer = time.AfterFunc(c.timeout, func() {
			c.mu.Lock()
			c.fired = true
			c.mu.Unlock()
			c.onOverdue()
		})
	}
}

// overdue reports whether the clock fired (the call was cancelled for an overdue reply).
func (c *replyClock) overdue() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fired
}

func (c *replyClock) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.outstanding = 0
	c.rearm()
}
