"""Keyboard play in a pygame window, for the real environment and for the dream alike.

Keys: type digits then Enter to put the item into a bin at that level; Left/Right move a
cursor over the valid levels and Space places there; `n` opens a new bin; `r` restarts
once the episode is over; `q` (or closing the window) quits. An invalid choice is refused
with a message and the game goes on.

Beside the model's 64x64 picture the window draws the packing as a person would: every open
bin a column filled to its level (grouped by level; a pile with a count when there are more
than 3 at a level), the arriving item as a box, and the levels it fits highlighted with the
number to type. `draw_packing` draws that view onto any pygame Surface (tests call it headless).

No import of bin_packing_environment here: its main() imports this module.
"""
from __future__ import annotations

import os
import sys

import numpy as np

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")   # pygame's greeting on stdout
PANEL_WIDTH = 720
VIEW_HEIGHT = 372                 # the packing drawing; text lines go below it
BACKGROUND = (40, 40, 40)
BIN_EMPTY = (18, 18, 22)          # inside of a bin, above its content
BIN_EDGE = (170, 170, 170)
FILL = (74, 144, 214)             # content of a bin the item fits on
FILL_DIM = (92, 100, 116)         # content of a bin the item does not fit on
ITEM = (245, 150, 45)
HIGHLIGHT = (88, 80, 28)          # behind a level the item fits on
BADGE = (245, 205, 60)            # the number to type
CURSOR = (255, 255, 255)
TEXT = (230, 230, 230)
DIM_TEXT = (140, 140, 140)
MAX_COLUMNS = 3                   # bins drawn one by one per level; more become a pile with a count

# SDL video drivers that need no screen of the user's (the tests use "dummy"); x11 and wayland need one.
_SCREENLESS_DRIVERS = {"dummy", "offscreen", "kmsdrm", "kmsdrm_legacy", "directfb", "fbcon", "rpi", "vivante",
                       "evdev", "windows", "cocoa", "uikit", "android", "emscripten"}


def display_problem(environ=None, platform: str | None = None) -> str | None:
    """Why no window can open here (Linux/BSD with no X11 or Wayland screen), or None.

    SDL_VIDEODRIVER, when set, is trusted for drivers that need no screen (e.g. "dummy").
    """
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if platform.startswith(("win", "darwin", "cygwin")):
        return None
    x11, wayland = bool(environ.get("DISPLAY")), bool(environ.get("WAYLAND_DISPLAY"))
    drivers = [d.strip().lower() for d in environ.get("SDL_VIDEODRIVER", "").split(",") if d.strip()]
    if not drivers:
        return None if x11 or wayland else "DISPLAY and WAYLAND_DISPLAY are unset"
    if any(d in _SCREENLESS_DRIVERS or (d == "x11" and x11) or (d == "wayland" and wayland) for d in drivers):
        return None
    return f"SDL_VIDEODRIVER={environ['SDL_VIDEODRIVER']} needs a screen, and DISPLAY/WAYLAND_DISPLAY are unset"


def require_display(script: str | None = None) -> None:
    """Exit with one line on stderr (status 1) when no window can open, before any window is tried
    (with no screen SDL crashes or silently waits for keys that never come)."""
    problem = display_problem()
    if problem:
        script = script or os.path.basename(sys.argv[0] or "bin_packing_environment.py")
        raise SystemExit(f"error: keyboard play needs a screen ({problem}): run it on a desktop "
                         f"(or over ssh -X), or in a virtual one: xvfb-run -a python {script}")


# ---------------------------------------------------------------- the packing, drawn for a person

def packing_groups(state, mask) -> list[dict]:
    """Levels to draw, left to right: the new-bin choice (level 0), then every level with open bins
    or marked valid (a dream's mask may mark a level its picture shows no bin at)."""
    state, mask = np.asarray(state), np.asarray(mask)
    B = len(state) - 1
    groups = [{"level": 0, "count": 0, "valid": bool(mask[0]) if len(mask) else True}]
    for h in range(1, B):
        count = int(state[h])
        valid = bool(h < len(mask) and mask[h])
        if count > 0 or valid:
            groups.append({"level": h, "count": count, "valid": valid})
    return groups


def packing_layout(state, mask, rect) -> dict:
    """Where draw_packing puts things inside rect (x, y, w, h): returns {"unit": pixels per level,
    "item": the item box (x, y, w, h), "groups": [{level, count, valid, area, bins: [(x, y, w, h)],
    badge}]} (each bin rect is the whole bin, B units tall; level 0 is the new bin)."""
    x0, y0, w, h = (int(v) for v in rect)
    state = np.asarray(state)
    B, item = len(state) - 1, int(state[-1])
    groups = packing_groups(state, mask)
    header, count_h, badge_h = 30, 24, 30
    unit = max(1, (h - header - count_h - badge_h - 8) // B)
    bin_h = unit * B
    top = y0 + header + count_h
    item_w, ruler_w = 34, 26
    avail = w - item_w - ruler_w - 8

    def widths_for(max_columns, col_w, badge_w):
        ncols = [1 if g["level"] == 0 or g["count"] > max_columns else max(1, g["count"]) for g in groups]
        piled = [g["level"] > 0 and g["count"] > max_columns for g in groups]
        return ncols, piled, [max(n * col_w + (n - 1) * 3 + (6 if p else 0), badge_w) for n, p in zip(ncols, piled)]

    # the widest columns that fit: bins one by one (up to MAX_COLUMNS a level) while they stay
    # at least 14 px wide, else one column (a pile with its count) a level
    for max_columns, min_w in ((MAX_COLUMNS, 14), (1, 4)):
        for col_w in range(30, min_w - 1, -1):
            gap, badge_w = (8, 22) if col_w > 12 else (3, 18)
            ncols, piled, widths = widths_for(max_columns, col_w, badge_w)
            if sum(widths) + gap * (len(widths) - 1) <= avail:
                break
        else:
            continue
        break
    item_box = (x0 + 4, top + bin_h - item * unit, item_w - 8, item * unit)
    x = x0 + item_w + ruler_w + 8
    for g, n, p, gw in zip(groups, ncols, piled, widths):
        used = n * col_w + (n - 1) * 3 + (6 if p else 0)
        bx = x + (gw - used) // 2 + (6 if p else 0)
        g["bins"] = [(bx + k * (col_w + 3), top, col_w, bin_h) for k in range(n)]
        g["piled"] = p
        g["area"] = (x - 1, top - count_h, gw + 2, bin_h + count_h + badge_h)
        g["badge"] = (x + (gw - badge_w) // 2, top + bin_h + 5, badge_w, badge_h - 8)
        x += gw + gap
    return {"unit": unit, "item": item_box, "groups": groups, "bin_size": B, "top": top, "bin_height": bin_h,
            "ruler_x": x0 + item_w + ruler_w, "right": x - gap}


def draw_packing(surface, state, mask, cursor=None, rect=None, fonts=None) -> dict:
    """Draw the packing onto a pygame Surface inside rect (default: all of it); returns the layout.

    state: [unused, N_1..N_{B-1}, item]; mask: the valid actions (0 = new bin); cursor: the level
    chosen so far (0 = a new bin; None = none), where the item is drawn as it would land.
    """
    import pygame
    if not pygame.font.get_init():
        pygame.font.init()
    big, small = fonts or (pygame.font.Font(None, 26), pygame.font.Font(None, 22))
    rect = pygame.Rect(rect if rect is not None else surface.get_rect())
    layout = packing_layout(state, mask, rect)
    unit, B, item = layout["unit"], layout["bin_size"], int(np.asarray(state)[-1])
    fits = max((g["level"] for g in layout["groups"] if g["valid"] and g["level"] > 0), default=None)
    title = f"arriving item: {item}" + (f"   fits on bins at levels <= {B - item} (highlighted)" if fits else
                                        "   fits on no open bin: n opens a new one")
    surface.blit(big.render(title, True, TEXT), (rect.x + 4, rect.y + 4))
    ix, iy, iw, ih = layout["item"]
    label = small.render("item", True, ITEM)
    surface.blit(label, (ix + (iw - label.get_width()) // 2, layout["top"] - 20))
    pygame.draw.rect(surface, ITEM, (ix, iy, iw, ih))
    pygame.draw.rect(surface, BIN_EMPTY, (ix, iy, iw, ih), 1)
    size_label = big.render(str(item), True, ITEM)
    surface.blit(size_label, (ix + (iw - size_label.get_width()) // 2, layout["top"] + layout["bin_height"] + 6))
    rx, top, bin_h = layout["ruler_x"], layout["top"], layout["bin_height"]
    pygame.draw.line(surface, DIM_TEXT, (rx, top), (rx, top + bin_h))
    tick, every = (5, 10) if B >= 20 else (1, 5) if B >= 10 else (1, 3)
    for lv in range(0, B + 1, tick):
        y = top + bin_h - lv * unit
        pygame.draw.line(surface, DIM_TEXT, (rx - (5 if lv % every == 0 or lv == B else 2), y), (rx, y))
        if lv % every == 0 or lv == B:
            text = small.render(str(lv), True, DIM_TEXT)
            surface.blit(text, (rx - 7 - text.get_width(), y - text.get_height() // 2))
    for g in layout["groups"]:
        level, valid = g["level"], g["valid"]
        if valid:
            pygame.draw.rect(surface, HIGHLIGHT, g["area"], border_radius=4)
        if cursor is not None and cursor == level:
            pygame.draw.rect(surface, CURSOR, g["area"], 2, border_radius=4)
        fill = FILL if valid else FILL_DIM
        if g["piled"]:                                     # a pile: two outlines behind the front bin
            bx, by, bw, bh = g["bins"][0]
            for off in (6, 3):
                pygame.draw.rect(surface, BIN_EMPTY, (bx - off, by - off, bw, bh))
                pygame.draw.rect(surface, BIN_EDGE, (bx - off, by - off, bw, bh), 1)
        for k, (bx, by, bw, bh) in enumerate(g["bins"]):
            pygame.draw.rect(surface, BIN_EMPTY, (bx, by, bw, bh))
            if level and g["count"] == 0:                  # a dream's mask with no such bin in its picture: a line
                pygame.draw.line(surface, fill, (bx, by + bh - level * unit), (bx + bw - 1, by + bh - level * unit), 2)
            elif level:
                pygame.draw.rect(surface, fill, (bx, by + bh - min(level, B) * unit, bw, min(level, B) * unit))
            if k == 0 and cursor is not None and cursor == level and valid:
                land = min(item, B - level) * unit
                ghost = pygame.Rect(bx + 1, by + bh - level * unit - land, bw - 2, land)
                pygame.draw.rect(surface, ITEM, ghost)
            pygame.draw.rect(surface, BIN_EDGE, (bx, by, bw, bh), 1)
        ax, ay, aw, ah = g["area"]
        above = ("new" if aw >= 30 else "") if level == 0 else (f"\u00d7{g['count']}" if g["count"] != 1 else "")
        if above:
            text = small.render(above, True, TEXT if valid else DIM_TEXT)
            surface.blit(text, (ax + (aw - text.get_width()) // 2, ay + 3))
        kx, ky, kw, kh = g["badge"]
        name = "n" if level == 0 else str(level)
        if valid:
            pygame.draw.rect(surface, BADGE, g["badge"], border_radius=4)
            text = big.render(name, True, (20, 20, 20))
        else:
            text = small.render(name, True, DIM_TEXT)
        surface.blit(text, (kx + (kw - text.get_width()) // 2, ky + (kh - text.get_height()) // 2 + 1))
    if 0 < item <= B:                                      # a bin whose content stays below this line takes the item
        y = top + bin_h - (B - item) * unit
        for x in range(rx + 2, layout["right"], 8):
            pygame.draw.line(surface, ITEM, (x, y), (min(x + 3, layout["right"]), y))
    return layout


def packing_image(state, mask, cursor=None, size=(PANEL_WIDTH, VIEW_HEIGHT)) -> np.ndarray:
    """The packing view as an RGB array (h, w, 3), drawn off screen."""
    import pygame
    surface = pygame.Surface(size)
    surface.fill(BACKGROUND)
    draw_packing(surface, state, mask, cursor)
    return pygame.surfarray.array3d(surface).transpose(1, 0, 2)


def waste(state) -> int:
    """Empty space in the open bins now."""
    state = np.asarray(state)
    B = len(state) - 1
    return int(sum(int(c) * (B - h) for h, c in enumerate(state[1:B], start=1)))


# ---------------------------------------------------------------- the game


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
        """What the panel shows: the env's info["state"] (the real state, or what a dream's picture shows)."""
        if "state" not in self.info:
            raise ValueError("keyboard play needs an environment whose info holds the packing state")
        return np.asarray(self.info["state"])

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
        self.cursor = 0
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
        return [f"step {self.steps}   reward so far {self.total:.0f}   waste now {waste(state)}   "
                f"open bins {int(np.sum(state[1:-1]))}",
                f"typed: {self.typed or '-'}   cursor: {self.cursor or '-'}",
                self.message,
                "digits + Enter: that level   n: new bin   Left/Right + Space   r: restart   q: quit"]


def _blit_picture(screen, picture, scale):
    import pygame
    picture = np.asarray(picture).repeat(scale, 0).repeat(scale, 1)
    screen.blit(pygame.surfarray.make_surface(picture.transpose(1, 0, 2)), (0, 0))


def _draw_frame(screen, fonts, picture, scale, state, mask, cursor, lines):
    """The model's picture on the left; the packing and the text lines beside it."""
    screen.fill(BACKGROUND)
    _blit_picture(screen, picture, scale)
    x = 64 * scale + 10
    if state is not None:
        draw_packing(screen, state, mask, cursor, (x, 8, PANEL_WIDTH - 20, VIEW_HEIGHT), fonts)
    y = VIEW_HEIGHT + 20 if state is not None else 10
    for k, line in enumerate(lines):
        colour = BADGE if "not a valid" in line else TEXT
        screen.blit(fonts[1].render(line, True, colour), (x, y + 21 * k))


def _window(scale, lines=6):
    import pygame
    pygame.display.init()                  # not pygame.init(): no sound, so no audio device is opened
    pygame.font.init()
    size = 64 * scale
    screen = pygame.display.set_mode((size + PANEL_WIDTH, max(size, VIEW_HEIGHT + 28 + 21 * lines)))
    pygame.display.set_caption("online bin packing")
    return screen, (pygame.font.Font(None, 26), pygame.font.Font(None, 22))


def play(env, seed=None, scale=8, max_frames=None, fps=30, screenshot=None):
    """Open the window and play until q; returns the Game (tests read its state).

    screenshot: a PNG path written with the last frame drawn."""
    require_display()
    import pygame
    screen, fonts = _window(scale)
    clock = pygame.time.Clock()
    game = Game(env, seed)
    frames, running = 0, True
    while running and (max_frames is None or frames < max_frames):
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                running = False
            elif event.type == pygame.KEYDOWN:
                running = game.key(pygame.key.name(event.key)) and running
        _draw_frame(screen, fonts, game.obs["real_obs"], scale, game.state, game.mask, game.cursor or None,
                    game.panel_lines())
        pygame.display.flip()
        clock.tick(fps)
        frames += 1
    if screenshot:
        pygame.image.save(screen, screenshot)
    pygame.quit()
    return game


def watch(frames, captions, scale=8, fps=20, max_frames=None, states=None, masks=None, actions=None):
    """Show a sequence of pictures with a few lines of text each (q or closing quits); with states
    and masks, the packing beside each picture, the action taken (actions) drawn as the cursor."""
    require_display()
    import pygame
    screen, fonts = _window(scale, lines=max((len(c) for c in captions), default=0))
    clock = pygame.time.Clock()
    for i, (frame, lines) in enumerate(zip(frames, captions)):
        if max_frames is not None and i >= max_frames:
            break
        if any(e.type == pygame.QUIT or (e.type == pygame.KEYDOWN and e.key == pygame.K_q)
               for e in pygame.event.get()):
            break
        state = None if states is None else states[i]
        mask = None if masks is None else masks[i]
        cursor = None if actions is None else int(actions[i])
        _draw_frame(screen, fonts, frame, scale, state, mask, cursor, lines)
        pygame.display.flip()
        clock.tick(fps)
    pygame.quit()
