"""Keyboard play in a pygame window, for the real environment and for the dream alike.

Keys: type digits then Enter to put the item into a bin at that level; Left/Right move a
cursor over the valid levels and Space places there; `n` opens a new bin; `r` restarts
once the episode is over; `q` (or closing the window) quits. An invalid choice is refused
with a message and the game goes on.
"""
from __future__ import annotations

import numpy as np

from bin_packing_environment import decode_picture

PANEL_WIDTH = 330


class Game:
    """The keyboard logic, separate from drawing so that tests can drive it."""

    def __init__(self, env, seed=None):
        self.env, self.seed = env, seed
        self.restart(seed)

    def restart(self, seed=None):
        self.obs, info = self.env.reset(seed=seed, return_info=True)
        self.info = info
        self.typed, self.cursor, self.steps, self.total = "", 0, 0, 0.0
        self.done, self.message = False, "type a level + Enter, arrows + Space, n = new bin"

    @property
    def mask(self) -> np.ndarray:
        return np.asarray(self.obs["action_mask"])

    @property
    def state(self) -> np.ndarray:
        """What the panel shows: the true state if the env has one, else what the picture shows."""
        if "state" in self.info:
            return np.asarray(self.info["state"])
        return decode_picture(self.obs["real_obs"], len(self.mask))

    def valid_levels(self) -> list[int]:
        return [int(a) for a in np.flatnonzero(self.mask) if a > 0]

    def act(self, action: int) -> None:
        if self.done:
            self.message = "episode over: r restarts, q quits"
            return
        if not 0 <= action < len(self.mask) or not self.mask[action]:
            self.message = f"level {action} is not a valid choice for item {self.state[-1]}"
            return
        self.obs, reward, self.done, self.info = self.env.step(action)
        self.steps += 1
        self.total += reward
        self.message = f"placed at {'a new bin' if action == 0 else f'level {action}'}: reward {reward:+.0f}"
        if self.done:
            self.message = f"episode over after {self.steps} items, total reward {self.total:.0f}: r / q"

    def key(self, name: str) -> bool:
        """Handle one key by name (pygame.key.name); False means quit."""
        if name == "q":
            return False
        if name in "0123456789" and len(name) == 1:
            self.typed = (self.typed + name)[-3:]
        elif name == "backspace":
            self.typed = self.typed[:-1]
        elif name in ("return", "enter"):
            if self.typed:
                self.act(int(self.typed))
            self.typed = ""
        elif name == "n":
            self.act(0)
        elif name in ("left", "right"):
            levels = self.valid_levels()
            if levels:
                step = 1 if name == "right" else -1
                later = [lv for lv in levels if (lv - self.cursor) * step > 0]
                self.cursor = (min(later) if step > 0 else max(later)) if later else levels[0 if step > 0 else -1]
        elif name == "space":
            if self.cursor:
                self.act(self.cursor)
            else:
                self.message = "no level chosen: move the cursor with Left/Right first (not a valid choice)"
        elif name == "r" and self.done:
            self.restart()
        return True

    def panel_lines(self) -> list[str]:
        state = self.state
        counts = {h: int(c) for h, c in enumerate(state[1:-1], start=1) if c}
        return [f"arriving item: {state[-1]}", f"step {self.steps}   reward so far {self.total:.0f}",
                f"waste now: {int(sum(c * (len(state) - 1 - h) for h, c in counts.items()))}",
                f"valid levels: {self.valid_levels()}", f"cursor: {self.cursor or '-'}   typed: {self.typed or '-'}",
                "bins per level:"] + [f"  level {h:2d}: {c}" for h, c in sorted(counts.items())] + ["", self.message]


def play(env, seed=None, scale=8, max_frames=None, fps=30):
    """Open the window and play until q; returns the Game (tests read its state)."""
    import pygame
    pygame.init()
    size = 64 * scale
    screen = pygame.display.set_mode((size + PANEL_WIDTH, max(size, 520)))
    pygame.display.set_caption("online bin packing")
    font = pygame.font.Font(None, 22)
    clock = pygame.time.Clock()
    game = Game(env, seed)
    frames, running = 0, True
    while running and (max_frames is None or frames < max_frames):
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                running = False
            elif event.type == pygame.KEYDOWN:
                running = game.key(pygame.key.name(event.key)) and running
        screen.fill((40, 40, 40))
        picture = np.asarray(game.obs["real_obs"]).repeat(scale, 0).repeat(scale, 1)
        screen.blit(pygame.surfarray.make_surface(picture.transpose(1, 0, 2)), (0, 0))
        for i, line in enumerate(game.panel_lines()[:26]):
            screen.blit(font.render(line, True, (230, 230, 230)), (size + 10, 10 + 19 * i))
        pygame.display.flip()
        clock.tick(fps)
        frames += 1
    pygame.quit()
    return game


def watch(frames, captions, scale=8, fps=20, max_frames=None):
    """Show a sequence of pictures with a few lines of text each (q or closing quits)."""
    import pygame
    pygame.init()
    size = 64 * scale
    screen = pygame.display.set_mode((size + PANEL_WIDTH, size))
    font = pygame.font.Font(None, 22)
    clock = pygame.time.Clock()
    for i, (frame, lines) in enumerate(zip(frames, captions)):
        if max_frames is not None and i >= max_frames:
            break
        if any(e.type == pygame.QUIT or (e.type == pygame.KEYDOWN and e.key == pygame.K_q)
               for e in pygame.event.get()):
            break
        screen.fill((40, 40, 40))
        picture = np.asarray(frame).repeat(scale, 0).repeat(scale, 1)
        screen.blit(pygame.surfarray.make_surface(picture.transpose(1, 0, 2)), (0, 0))
        for k, line in enumerate(lines):
            screen.blit(font.render(line, True, (230, 230, 230)), (size + 10, 10 + 19 * k))
        pygame.display.flip()
        clock.tick(fps)
    pygame.quit()
