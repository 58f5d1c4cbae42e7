"""Keyboard play: the packing drawn for a person (headless, SDL's dummy driver) and the no-screen exit."""
import os
import subprocess
import sys

import numpy as np
import pytest

import play

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = 30


def packing(counts, item):
    state = np.zeros(B + 1, int)
    for level, n in counts.items():
        state[level] = n
    state[-1] = item
    mask = np.zeros(B, np.uint8)
    mask[0] = 1
    mask[[h for h, n in counts.items() if n and h + item <= B]] = 1
    return state, mask


def draw(state, mask, cursor=None, size=(play.PANEL_WIDTH, play.VIEW_HEIGHT)):
    import pygame
    surface = pygame.Surface(size)
    surface.fill(play.BACKGROUND)
    layout = play.draw_packing(surface, state, mask, cursor)
    return surface, {g["level"]: g for g in layout["groups"]}, layout


def pixel(surface, x, y):
    return tuple(surface.get_at((int(x), int(y))))[:3]


def at_level(rect, unit, level, dx=None):
    """A pixel inside the bin rect at the middle of the given level's unit."""
    x, y, w, h = rect
    return x + (w // 2 if dx is None else dx), y + h - (level + 0.5) * unit


def test_a_bin_is_filled_to_its_level():
    state, mask = packing({15: 1, 28: 1}, item=6)
    surface, groups, layout = draw(state, mask)
    unit, (x, y, w, h) = layout["unit"], groups[15]["bins"][0]
    assert h == unit * B
    assert pixel(surface, *at_level((x, y, w, h), unit, 7)) == play.FILL            # a quarter up: filled
    assert pixel(surface, *at_level((x, y, w, h), unit, 14)) == play.FILL
    assert pixel(surface, *at_level((x, y, w, h), unit, 15)) == play.BIN_EMPTY      # above level 15: empty
    assert pixel(surface, *at_level((x, y, w, h), unit, 22)) == play.BIN_EMPTY      # three quarters up
    ix, iy, iw, ih = layout["item"]
    assert ih == 6 * unit and pixel(surface, ix + iw // 2, iy + ih // 2) == play.ITEM


def test_valid_levels_are_highlighted_and_invalid_ones_are_not():
    state, mask = packing({3: 2, 15: 1, 28: 1}, item=6)                       # 28 + 6 > 30: invalid
    surface, groups, layout = draw(state, mask)
    assert [g["valid"] for g in (groups[0], groups[3], groups[15], groups[28])] == [True, True, True, False]
    below_bins = layout["top"] + layout["bin_height"] + 2                      # between a bin and its number
    for level in (0, 3, 15):
        ax, ay, aw, ah = groups[level]["area"]
        assert pixel(surface, ax + aw // 2, below_bins) == play.HIGHLIGHT, level
        kx, ky, kw, kh = groups[level]["badge"]
        assert pixel(surface, kx + 1, ky + kh // 2) == play.BADGE, level        # the number to type
    ax, ay, aw, ah = groups[28]["area"]
    assert pixel(surface, ax + aw // 2, below_bins) == play.BACKGROUND
    kx, ky, kw, kh = groups[28]["badge"]
    assert pixel(surface, kx + 1, ky + kh // 2) != play.BADGE
    unit = layout["unit"]
    assert pixel(surface, *at_level(groups[28]["bins"][0], unit, 20)) == play.FILL_DIM
    assert len(groups[3]["bins"]) == 2                                         # two bins drawn one by one


def test_the_cursor_shows_where_the_item_lands():
    state, mask = packing({15: 1, 20: 1}, item=6)
    unit = draw(state, mask)[2]["unit"]
    surface, groups, _ = draw(state, mask, cursor=15)
    assert pixel(surface, *at_level(groups[15]["bins"][0], unit, 18)) == play.ITEM      # 15..21 holds the item
    assert pixel(surface, *at_level(groups[15]["bins"][0], unit, 22)) == play.BIN_EMPTY
    assert pixel(surface, *at_level(groups[20]["bins"][0], unit, 23)) == play.BIN_EMPTY  # not at the other bin
    ax, ay, aw, ah = groups[15]["area"]
    assert pixel(surface, ax + aw // 2, ay) == play.CURSOR


def test_many_bins_at_one_level_are_one_pile_with_a_count():
    state, mask = packing({7: 40, 9: 3}, item=5)
    _, groups, _ = draw(state, mask)
    assert len(groups[7]["bins"]) == 1 and groups[7]["piled"]
    assert len(groups[9]["bins"]) == 3 and not groups[9]["piled"]


def test_every_level_fits_side_by_side():
    state, mask = packing({h: 1 + h % 5 for h in range(1, B)}, item=11)
    size = (play.PANEL_WIDTH, play.VIEW_HEIGHT)
    surface, groups, layout = draw(state, mask, size=size)
    areas = sorted(g["area"] for g in groups.values())
    assert len(areas) == B                                                     # new bin + 29 levels
    assert all(a[0] + a[2] <= b[0] for a, b in zip(areas, areas[1:]))           # no overlap
    assert areas[-1][0] + areas[-1][2] <= size[0] and all(g["bins"][0][2] >= 4 for g in groups.values())
    image = play.packing_image(state, mask, cursor=4)
    assert image.shape == (size[1], size[0], 3)


def test_watch_and_play_draw_the_packing(tmp_path):
    import bin_packing_environment as E
    state, mask = packing({15: 1}, item=6)
    picture = E.encode_state(state)
    play.watch([picture] * 2, [["a"]] * 2, scale=2, fps=1000, states=[state] * 2, masks=[mask] * 2, actions=[15, 0])
    shot = tmp_path / "shot.png"
    game = play.play(E.BinPacking2DMaskGymEnvironment(dict(E.PRESETS["perfect_pack"], time_horizon=5)), seed=1,
                     scale=2, max_frames=2, fps=1000, screenshot=str(shot))
    assert game.steps == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("environ, platform, ok", [
    ({}, "linux", False),
    ({"DISPLAY": ":0"}, "linux", True),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
    ({"SDL_VIDEODRIVER": "dummy"}, "linux", True),
    ({"SDL_VIDEODRIVER": "x11"}, "linux", False),
    ({"SDL_VIDEODRIVER": "wayland,x11", "DISPLAY": ":1"}, "linux", True),
    ({}, "darwin", True),
    ({}, "win32", True),
])
def test_display_problem(environ, platform, ok):
    assert (play.display_problem(environ, platform) is None) == ok


@pytest.mark.parametrize("script", ["bin_packing_environment.py", "dream_env.py"])
def test_keyboard_play_without_a_screen_says_so_and_exits(script):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    proc = subprocess.run([sys.executable, script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])      # not a hang, not a crash (139)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: keyboard play needs a screen") and "xvfb-run" in last and script in last
    assert "Traceback" not in proc.stderr
